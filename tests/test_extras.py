"""Training extras, each a recipe key and off by default: train.ema (timm ModelEmaV3 over the learned
tensors only), data.mixup / cutmix / mixup_prob (timm Mixup, soft targets), train.layer_decay (timm's
layer-wise lr groups, right when most of the network is fixed) and train.keep (last, or the best epoch
on a tuning carve-out). Fixed weights stay bit-identical with all of them on."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from conftest import TINY, write_recipe
from partial_ft import apply_strategy, delta
from partial_ft import recipe as recipes
from partial_ft import train
from partial_ft.ema import LearnedEma
from partial_ft.errors import UserError
from partial_ft.evaluation import evaluate_run
from partial_ft.mixing import Mixer

ALL_ON = {"data": {"tune_fraction": 0.25, "mixup": 0.4, "cutmix": 1.0, "mixup_prob": 0.9},
          "train": {"ema": True, "ema_decay": 0.5, "layer_decay": 0.7, "keep": "best", "epochs": 2, "max_steps": None}}


def _recipe(root: Path, name: str, sections: dict) -> recipes.Recipe:
    raw = {k: dict(v) for k, v in TINY.items()}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    raw["data"]["max_train_samples"] = 96  # 3 batches an epoch, of which the carve-out takes a quarter
    raw["output"] = {"dir": str(root / name)}
    return recipes.load(write_recipe(root / f"{name}.yaml", raw))


@pytest.fixture(scope="module")
def all_on(tmp_path_factory):
    """One run with every extra on; the model training ended with is captured as the delta is saved."""
    root = tmp_path_factory.mktemp("extras")
    captured = {}
    save = delta.save_delta

    def capture(path, model, *args, **kwargs):
        captured["model"] = model
        return save(path, model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(delta, "save_delta", capture)
        summary = train.run(_recipe(root, "all_on", ALL_ON))
    return root / "all_on", summary, captured["model"]


def test_fixed_weights_stay_bit_identical_with_every_extra_on(all_on):
    run_dir, summary, model = all_on
    recorded = delta.read_info(run_dir)["fingerprint_parts"]  # sha256 of every fixed value, before training
    assert delta.fingerprint_parts(model) == recorded
    assert summary["steps"] > 0 and summary["kept_epoch"] in (1, 2)


def test_the_kept_delta_is_what_was_measured(all_on):
    """The delta holds the kept epoch's averaged values: evaluating it gives the summary's numbers exactly."""
    run_dir, summary, _ = all_on
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = max(metrics, key=lambda m: m["val_top1"])  # the first best on ties, as the keeper keeps it
    assert summary["kept_epoch"] == best["epoch"] and summary["val_top1"] == best["val_top1"]
    result = evaluate_run(run_dir)
    assert (result["val_top1"], result["val_loss"]) == (summary["val_top1"], summary["val_loss"])


def test_ema_averages_only_the_learned_tensors():
    """ModelEmaV3's step rule (the first step copies, then ema = d * ema + (1 - d) * value) on a model
    whose first layer is fixed: with d = 0.5 and values 1, 2, 3 the average is 1, 1.5, 2.25."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    fixed = model[0].weight.detach().clone()
    ema = LearnedEma(model, decay=0.5)
    assert sum(t.numel() for t in ema.ema.module.state_dict().values()) == 6  # the second layer only
    for step, value in enumerate((1.0, 2.0, 3.0), start=1):
        with torch.no_grad():
            model[1].weight.fill_(value)
        ema.update(step)
    with ema.applied():
        assert torch.equal(model[1].weight, torch.full((2, 2), 2.25))
    assert torch.equal(model[1].weight, torch.full((2, 2), 3.0))  # its own values back after the block
    ema.apply()
    assert torch.equal(model[1].weight, torch.full((2, 2), 2.25)) and torch.equal(model[0].weight, fixed)


@pytest.mark.parametrize("size", [8, 7, 1])
def test_mixup_targets_are_soft_and_odd_batches_keep_their_last_label(size):
    """Every target row sums to 1; an odd batch's last image is left as it was, with its own label."""
    cfg = recipes.DataCfg(mixup=0.8, cutmix=0.0, mixup_prob=1.0)
    x = torch.arange(size, dtype=torch.float32).view(size, 1, 1, 1).expand(size, 3, 4, 4).clone()
    y = torch.arange(size) % 3
    mixed, target = Mixer(cfg, num_classes=3, label_smoothing=0.0)(x.clone(), y)
    assert mixed.shape == x.shape and target.shape == (size, 3)
    assert torch.allclose(target.sum(1), torch.ones(size))
    if size % 2:
        assert torch.equal(mixed[-1], x[-1]) and target[-1].tolist() == [float(i == y[-1]) for i in range(3)]


def _factory(name: str):
    return lambda: timm.create_model(name, num_classes=10)


# layer_decay 0.5, lr 0.1: a learned tensor's lr is 0.1 x 0.5^(layers above it in the network, fixed ones
# counted). test_resnet's layers: stem, layer1.0 .. layer4.0, fc (6); test_vit's: stem (patch_embed, ...),
# blocks.0 .. blocks.5 (the final norm with the last block), head (8)
@pytest.mark.parametrize("arch, strategy, expected", [
    ("test_resnet", {"name": "block", "index": "middle"},  # only layer2.0 and the head learn
     {"layer2.0.conv1.weight": 0.0125, "layer2.0.bn1.weight": 0.0125, "fc.weight": 0.1, "fc.bias": 0.1}),
    ("test_resnet", {"name": "filters", "fraction": 0.25, "fixed": "random"},
     {"conv1.0.weight_learned": 0.003125, "layer1.0.conv1.weight_learned": 0.00625,
      "layer3.0.conv2.weight_learned": 0.025, "layer4.0.bn2.bias": 0.05, "fc.weight": 0.1}),
    ("test_resnet", {"name": "head"}, {"fc.weight": 0.1, "fc.bias": 0.1}),
    ("test_vit", {"name": "norm"},
     {"blocks.0.norm1.weight": 0.0015625, "blocks.5.norm2.bias": 0.05, "norm.weight": 0.05, "head.weight": 0.1}),
    ("test_vit", {"name": "bias"}, {"patch_embed.proj.bias": 0.00078125, "blocks.2.attn.qkv.bias": 0.00625}),
])
def test_layer_decay_gives_each_learned_tensor_the_lr_of_its_depth(arch, strategy, expected):
    model = _factory(arch)()
    apply_strategy(model, strategy, seed=0, init_model=_factory(arch))
    t = recipes.TrainCfg(lr=0.1, layer_decay=0.5)
    optimizer = train.make_optimizer(model, t)
    from timm.scheduler import create_scheduler_v2

    create_scheduler_v2(optimizer, sched="cosine", num_epochs=2, step_on_epochs=False, updates_per_epoch=3)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    for name, lr in expected.items():
        assert lr_of[id(params[name])] == pytest.approx(lr, rel=1e-9), name
    learned = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(lr_of) == learned  # every learned tensor has a group, no fixed one has


@pytest.mark.parametrize("sections, message", [
    ({"train": {"keep": "best"}}, "train.keep: best picks the epoch by its validation top-1, so it needs"),
    ({"train": {"solver": "exact", "ema": True}}, "train.solver: exact solves the classifier in one go, with no "
                                                  "steps to apply train.ema"),
    ({"data": {"mixup": 0.2}, "train": {"solver": "exact"}}, "no steps to apply data.mixup"),
    ({"data": {"cutmix": 1.0}, "train": {"cache_features": "on"}}, "train.cache_features: on cannot mix images"),
    ({"train": {"ema_decay": 1.0}}, "train.ema_decay must be in [0, 1)"),
    ({"train": {"layer_decay": 0}}, "train.layer_decay must be in (0, 1]"),
    ({"data": {"mixup": -1}}, "data.mixup and data.cutmix must be >= 0"),
    ({"data": {"mixup_prob": 2}}, "data.mixup_prob must be in [0, 1]"),
    ({"train": {"keep": "first"}}, "train.keep"),
])
def test_extras_refused_where_they_cannot_be_honest(tmp_path, sections, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        _recipe(tmp_path, "bad", sections)


def test_a_grid_tunes_the_extras():
    """The shipped grid's candidates are valid recipes: every extra is a key a grid's `tune` can vary."""
    from conftest import ROOT
    from partial_ft.sweep import grid as grids

    grid = grids.load(ROOT / "recipes" / "sweeps" / "extras_digits.yaml")
    assert {"train.ema", "data.mixup", "train.layer_decay"} <= set(grid.tune)
    seen = set()
    for candidate in grids.candidates(grid.tune):
        r = recipes.load(ROOT / "recipes" / "quickstart.yaml", grid.overrides + grids.candidate_overrides(candidate))
        seen.add((r.train.ema, r.data.mixup, r.train.layer_decay))
    assert seen == {(e, m, d) for e in (False, True) for m in (0.0, 0.2) for d in (None, 0.75)}


def test_stopped_after_an_epoch_then_resumed_equals_the_straight_run(all_on, tmp_path, monkeypatch):
    """The EMA, the best epoch so far and mixup's draws travel in the checkpoint: a run stopped at its
    first (epoch-end) checkpoint and resumed ends with the straight run's delta and numbers."""
    from partial_ft import collective
    from partial_ft.signals import Interrupted

    straight_dir, straight, _ = all_on
    recipe = _recipe(tmp_path, "resumed", ALL_ON)
    latest = recipe.run_dir / "checkpoints" / "latest"
    def sigterm_after_the_first_checkpoint(acc, stop) -> bool:
        if latest.exists():
            stop.signum = signal.SIGTERM  # what the handler records
        return stop.signum is not None

    monkeypatch.setattr(collective, "stop_requested", sigterm_after_the_first_checkpoint)
    with pytest.raises(Interrupted):
        train.run(recipe)
    monkeypatch.undo()
    summary = train.run(recipe, resume=True)
    for key in ("val_top1", "val_top5", "val_loss", "kept_epoch", "steps"):
        assert summary[key] == straight[key], key
    from safetensors.torch import load_file

    got, expected = load_file(str(recipe.run_dir / "delta.safetensors")), load_file(str(straight_dir / "delta.safetensors"))
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
