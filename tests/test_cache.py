"""The frozen-prefix feature cache: cuts found across architectures hold every learned parameter and
reproduce the model; cached training equals training on images; the auto / on / off policy."""
from __future__ import annotations

import json
import types

import pytest
import timm
import torch

from partial_ft import apply_strategy, cache, collective, load_delta, train
from partial_ft import recipe as recipes
from partial_ft.cuts import eval_mode, find_cut
from partial_ft.evaluation import evaluate_run
from partial_ft.errors import UserError
from partial_ft.normstats import FrozenStats as _FrozenStats

FROZEN = {"norm_stats": "freeze"}
# (arch, strategy) -> the cut found, or None: deepest cut first; a ViT's blocks are no chain (position
# embedding added in code), and strategies that learn in the first layer leave nothing to cut off
CUTS = [
    ("test_resnet", {"name": "head"}, "pre-logits"),
    ("test_resnet", {"name": "block", "index": "last"}, "layer4"),
    ("test_resnet", {"name": "block", "index": "middle"}, "layer2"),
    ("test_resnet", {"name": "filters", "fraction": 0.1}, None),
    ("test_vit", {"name": "head"}, "pre-logits"),
    ("test_vit", {"name": "block", "index": "last"}, None),
    ("test_convnext", {"name": "block", "index": "middle"}, "stages.2"),
    ("test_efficientnet", {"name": "block", "index": "last"}, "blocks.4"),
    ("densenet121", {"name": "head"}, "pre-logits"),
    ("vgg11_bn", {"name": "block", "index": "last"}, "forward_features"),
]


@pytest.mark.parametrize("arch,spec,expected", CUTS, ids=[f"{a}-{s['name']}-{s.get('index', '')}" for a, s, _ in CUTS])
def test_cut_holds_every_learned_parameter_and_reproduces_the_model(arch, spec, expected):
    torch.manual_seed(0)
    kwargs = {"img_size": 32} if "vit" in arch else {}
    model = timm.create_model(arch, num_classes=5, **kwargs)
    apply_strategy(model, spec, seed=0)
    x = torch.randn(3, 3, 32, 32)
    modules = [(n, type(m)) for n, m in model.named_modules()]
    cut, reason = find_cut(model, x)
    assert [(n, type(m)) for n, m in model.named_modules()] == modules  # the model itself is untouched
    if expected is None:
        assert cut is None and reason
        return
    assert cut is not None and cut.name == expected
    learned = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in cut.suffix.parameters() if p.requires_grad} == learned  # all of them train
    for name in cut.prefix_modules:  # and none of them is in the part that runs once
        assert not any(p.requires_grad for p in model.get_submodule(name).parameters(recurse=False)), name
    with eval_mode(model), torch.no_grad():
        assert torch.allclose(cut.suffix(cut.prefix(x)), model(x), rtol=1e-4, atol=1e-5)


def _run(tiny_recipe, name: str, mode: str, strategy: dict, **train_cfg):
    recipe = tiny_recipe(name, strategy=strategy, train={"epochs": 2, "max_steps": None, "cache_features": mode,
                                                         **train_cfg})
    r = recipes.load(recipe)
    summary = train.run(r)
    return r.run_dir, summary


CACHED = [{"name": "head", **FROZEN}, {"name": "block", "index": "last", **FROZEN}]


@pytest.mark.parametrize("strategy", CACHED, ids=["head", "last_block"])
def test_cached_training_equals_training_on_images(tiny_recipe, strategy):
    check_cached_equals_uncached(tiny_recipe, strategy)


def check_cached_equals_uncached(tiny_recipe, strategy: dict, rel: float = 0.0) -> None:
    """Cached and uncached runs end with the same accuracy and loss (rel: a relative tolerance, top-1
    then within one validation sample), and their deltas predict alike; eval on images agrees."""
    # the epoch loop on both sides (a cached linear head would otherwise be solved exactly: probe.py)
    cached_dir, cached = _run(tiny_recipe, "cached", "auto", strategy, solver="loop")
    plain_dir, plain = _run(tiny_recipe, "plain", "off", strategy, solver="loop")
    assert cached["feature_cache"]["cut"] in ("pre-logits", "layer4") and plain["feature_cache"] is None
    assert cached["feature_cache"]["images"] == 256 + 128
    one = 1 / 128 if rel else 0  # one validation sample
    assert cached["val_top1"] == pytest.approx(plain["val_top1"], abs=one)
    assert cached["val_top5"] == pytest.approx(plain["val_top5"], abs=one)
    assert cached["val_loss"] == pytest.approx(plain["val_loss"], rel=max(rel, 1e-4))
    assert cached["learned_params"] == plain["learned_params"]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():  # the delta of the cached run is a whole model, as good as the plain run's
        assert torch.allclose(load_delta(cached_dir)(x), load_delta(plain_dir)(x), rtol=max(rel, 1e-3), atol=1e-4)
    # eval on images agrees with what the run measured on cached validation features
    assert evaluate_run(cached_dir)["val_top1"] == pytest.approx(cached["val_top1"], abs=one)


def _decide(arch: str, spec: dict, mode: str, deterministic: bool = True, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=5, **kwargs)
    apply_strategy(model, spec, seed=0)
    return model, cache.decide_cut(model, mode, deterministic, (3, 32, 32), 100)


def test_policy_auto_on_off():
    _, d = _decide("test_resnet", {"name": "head", **FROZEN}, "off")
    assert d.cut is None and d.note == "off"
    _, d = _decide("test_resnet", {"name": "head", **FROZEN}, "auto", deterministic=False)
    assert d.cut is None and "random" in d.note
    with pytest.raises(UserError, match="cache_features: on needs a deterministic train transform"):
        _decide("test_resnet", {"name": "head", **FROZEN}, "on", deterministic=False)
    with pytest.raises(UserError, match="nothing to cache"):
        _decide("test_resnet", {"name": "filters", "fraction": 0.1}, "on")

    # BatchNorm statistics that update below the cut: auto declines, on freezes them and says so
    model, d = _decide("test_resnet", {"name": "head"}, "auto")
    assert d.cut is None and "update their statistics" in d.note
    assert not any(isinstance(m, _FrozenStats) for m in model.modules())
    model, d = _decide("test_resnet", {"name": "head"}, "on")
    assert d.cut.name == "pre-logits" and "keep their statistics fixed" in d.note
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(isinstance(m, _FrozenStats) for m in bns)

    # dropout below the cut: auto declines; on caches, says its dropout is off; neither changes the model
    model, d = _decide("test_resnet", {"name": "head", **FROZEN}, "auto", drop_rate=0.5)
    assert d.cut is None and "random in training" in d.note
    model, d = _decide("test_resnet", {"name": "head", **FROZEN}, "on", drop_rate=0.5)
    assert d.cut is not None and "dropout" in d.note
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    state = torch.get_rng_state()
    assert cache.decide_cut(model, "on", True, (3, 32, 32), 100).cut is not None
    assert torch.equal(state, torch.get_rng_state())  # deciding draws nothing from the run's generator
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nor changes the model

    # features much larger than the images (VGG's first conv: 64 channels at full resolution, before the
    # first learned BatchNorm): auto declines, on caches
    _, d = _decide("vgg11_bn", {"name": "norm", **FROZEN}, "auto", mlp_ratio=0.0625)
    assert d.cut is None and "larger than the images" in d.note
    _, d = _decide("vgg11_bn", {"name": "norm", **FROZEN}, "on", mlp_ratio=0.0625)
    assert d.cut.name == "features.1"


@pytest.mark.parametrize("available_gib, mode, expected", [
    (2, "on", "error: train.cache_features: on, but the features at pre-logits need 1.5 GiB, more than the "
              "1.2 GiB this machine can spare"),
    (2, "auto", "not used: the features need 1.5 GiB (more than 0.5 GiB)"),
    (4, "on", "features at pre-logits"),  # 60% of what is available
    (4, "auto", "not used: the features need 1.5 GiB (more than 1.0 GiB)"),
    (8, "auto", "features at pre-logits"),  # 25% of what is available
])
def test_memory_budget_is_a_share_of_available_memory(monkeypatch, available_gib, mode, expected):
    """test_resnet's pre-logits: 96 float32 per image x 2**22 images = 1.5 GiB of features."""
    memory = types.SimpleNamespace(available=available_gib * 2**30)
    monkeypatch.setattr(cache.psutil, "virtual_memory", lambda: memory)
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5)
    apply_strategy(model, {"name": "head", **FROZEN}, seed=0)
    try:
        note = cache.decide_cut(model, mode, True, (3, 32, 32), 2**22).note
    except UserError as e:
        note = f"error: {e}"
    assert note.startswith(expected), note


def test_yaml_booleans_and_summary_note(tiny_recipe, tmp_path):
    recipe = tiny_recipe("yaml", strategy={"name": "head", **FROZEN})
    text = recipe.read_text().replace("progress: false", "progress: false\n  cache_features: on")
    recipe.write_text(text)
    r = recipes.load(recipe)
    assert r.train.cache_features == "on"
    assert recipes.load(recipe, ["train.cache_features=off"]).train.cache_features == "off"
    train.run(r)
    s = json.loads((r.run_dir / "summary.json").read_text())
    assert s["feature_cache"]["cut"] == "pre-logits" and s["feature_cache_note"] == "features at pre-logits"
    assert s["train_seconds"] >= s["feature_extract_seconds"] > 0


def test_channels_last_and_compile_run_on_cpu(tiny_recipe):
    from torch._dynamo.utils import counters

    _, s = _run(tiny_recipe, "nhwc", "off", {"name": "filters", "fraction": 0.25}, channels_last=True, max_steps=2)
    assert s["steps"] == 2 and s["val_top1"] is not None
    # compiling the whole tiny ResNet takes minutes on 2 cores; the cached head (a Linear) is compiled in
    # seconds and exercises the same path: compiled training and evaluation, checkpoint, delta
    counters.clear()
    _, s = _run(tiny_recipe, "compiled", "auto", {"name": "head", **FROZEN}, compile=True, max_steps=2,
                checkpoint_every=1, solver="loop")
    assert s["steps"] == 2 and s["val_top1"] is not None and s["feature_cache"] is not None
    assert counters["stats"]["unique_graphs"] >= 1  # torch.compile really ran


def test_cached_run_stopped_mid_epoch_resumes_to_the_same_result(tiny_recipe, monkeypatch):
    """A stop (as SIGTERM makes it) at step 5 of a cached run checkpoints the suffix; the resumed run
    extracts the features again and ends exactly where the uninterrupted run ends."""
    import signal

    from partial_ft.signals import Interrupted

    strategy = {"name": "block", "index": "last", **FROZEN}
    _, straight = _run(tiny_recipe, "straight", "auto", strategy, checkpoint_every=3)
    recipe = recipes.load(tiny_recipe("stopped", strategy=strategy, train={
        "epochs": 2, "max_steps": None, "cache_features": "auto", "checkpoint_every": 3}))
    calls = {"n": 0}

    def stop_at_step_5(acc, stop):
        calls["n"] += 1
        if calls["n"] == 5:
            stop.signum = signal.SIGTERM
        return stop.signum is not None

    monkeypatch.setattr(collective, "stop_requested", stop_at_step_5)
    with pytest.raises(Interrupted):
        train.run(recipe)
    monkeypatch.undo()
    resumed = train.run(recipe, resume=True)
    timing = {"train_seconds", "feature_extract_seconds", "train_images_per_second", "peak_memory_bytes",
              "delta_bytes"}
    assert resumed["feature_cache"]["cut"] == "layer4"
    assert {k: v for k, v in resumed.items() if k not in timing} == \
        {k: v for k, v in straight.items() if k not in timing}


def test_shards_extracted_by_processes_add_up_to_the_whole_cache(tiny_recipe):
    """Each process extracts items rank, rank + world, ...; summing the shards (what share() does across
    processes, here in small chunks) gives exactly the single-process cache."""
    r = recipes.load(tiny_recipe("shards", strategy={"name": "head", **FROZEN}))
    s = train.prepare(r)
    ds, size = s.val_loader.dataset, tuple(s.data_config["input_size"])

    def run(shard):
        return cache.extract(s.cache.cut, s.model, ds, 16, 0, torch.device("cpu"), torch.no_grad, size,
                             shard=shard)

    whole, parts = run((0, 1)), [run((k, 3)) for k in range(3)]
    assert bool(whole.ok.all()) and not any(bool(p.ok.all()) for p in parts)
    chunks = []

    def reduce(t):  # stands in for the all-reduce: adds the other processes' rows of the same chunk
        start = sum(len(c) for c in chunks if c.shape[1:] == t.shape[1:] and c.dtype == t.dtype)
        chunks.append(t)
        for p in parts[1:]:
            src = {torch.uint8: p.ok.to(torch.uint8), torch.long: p.labels}.get(t.dtype, p.features)
            t = t + src.reshape(len(src), -1)[start:start + len(t)]
        return t

    shared = cache.share(parts[0], reduce, torch.device("cpu"), chunk_bytes=1000)
    assert torch.equal(shared.features, whole.features) and torch.equal(shared.labels, whole.labels)
    assert torch.equal(shared.ok, whole.ok)
