"""Deltas without training: perturb what learns (as training would), save, rebuild, compare. Only what
learned is stored and it round-trips exactly; a base that differs (other weights, another seed) is refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from partial_ft import load_delta, merged_state_dict
from partial_ft import recipe as recipes
from partial_ft.delta import fingerprint_parts, save_delta
from partial_ft.errors import UserError
from partial_ft.models import build
from partial_ft.strategies import apply_strategy

NUM_CLASSES = 5


def _trained(model_section: dict, strategy: dict, seed: int = 3):
    """A model built and stripped down as a run does, with its learned values and BN stats moved."""
    recipe = recipes.from_dict({"model": model_section, "strategy": strategy, "train": {"seed": seed}})
    model, init_model = build(recipe.model, NUM_CLASSES, seed=seed)
    apply_strategy(model, recipe.strategy, seed=seed, init_model=init_model)
    base = fingerprint_parts(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        model.train()
        model(torch.randn(4, 3, 32, 32, generator=gen))  # updates running stats where they update
    return recipe, model.eval(), base


def _save(tmp_path: Path, recipe, model, base) -> Path:
    names = [f"c{i}" for i in range(NUM_CLASSES)]
    return save_delta(tmp_path / "delta.safetensors", model, recipe, names, {"input_size": [3, 32, 32]}, base)


CASES = {
    # id: (model section, strategy)
    "resnet-filters-random": ({"name": "test_resnet"}, {"name": "filters", "fraction": 0.25, "fixed": "random"}),
    "resnet-in-frozen-stats": ({"name": "test_resnet"}, {"name": "filters", "count": 2, "dim": "in",
                                                         "select": "random", "norm_stats": "freeze"}),
    "vit-bias": ({"name": "test_vit", "kwargs": {"img_size": 32}}, {"name": "bias"}),
    "vit-linear-filters": ({"name": "test_vit", "kwargs": {"img_size": 32}},
                           {"name": "filters", "fraction": 0.1, "layers": "linear", "fixed": "random"}),
    "efficientnet-block": ({"name": "test_efficientnet"}, {"name": "block", "index": "middle"}),
    "convnext-spatial": ({"name": "test_convnext"}, {"name": "filters", "count": 1, "dim": "spatial"}),
}


@pytest.mark.parametrize("case", CASES)
def test_delta_round_trip_predicts_identically_and_stays_small(case, tmp_path):
    recipe, model, base = _trained(*CASES[case])
    path = _save(tmp_path, recipe, model, base)
    rebuilt = load_delta(path)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    for key, value in merged_state_dict(model).items():
        assert torch.equal(merged_state_dict(rebuilt)[key], value), key

    # only learned values and updated BN statistics: learned_params x 4 bytes (+ stats), never the model
    learned = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = sum(b.numel() * b.element_size() for n, b in model.named_buffers()
                if n.endswith(("running_mean", "running_var", "num_batches_tracked")))
    frozen = "freeze" in str(recipe.strategy)
    header = int.from_bytes(path.read_bytes()[:8], "little")
    assert path.stat().st_size - 8 - header == learned * 4 + (0 if frozen else stats)
    assert header < 4096 + 200 * len(load_file(str(path)))  # metadata + one small entry per tensor
    assert path.stat().st_size < 0.5 * sum(v.numel() * 4 for v in merged_state_dict(model).values())
    with safe_open(str(path), "pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    assert meta["seed"] == 3 and meta["model"]["name"] == recipe.model.name and meta["learned_params"] == learned
    assert set(meta["versions"]) == {"partial_ft", "torch", "timm"} and len(meta["fingerprint"]) == 64


def test_delta_of_a_local_checkpoint_base_and_refusal_of_another_base(tmp_path):
    """A base from local weights is re-read from its file; other weights or another seed are refused."""
    source = timm.create_model("test_resnet", num_classes=3)
    weights = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    recipe, model, base = _trained({"name": "test_resnet", "checkpoint": str(weights)},
                                   {"name": "filters", "fraction": 0.5, "select": "random"})
    path = _save(tmp_path, recipe, model, base)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_delta(tmp_path)(x), model(x))  # a run folder works too

    # the base file changed: fixed weights differ, so the delta is refused, not silently used
    changed = {k: v + 0.01 if v.is_floating_point() else v for k, v in source.state_dict().items()}
    save_file({k: v.contiguous() for k, v in changed.items()}, str(weights))
    with pytest.raises(UserError, match="does not fit its rebuilt base"):
        load_delta(path)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))

    # another seed draws another random selection of filters
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    save_file(tensors, str(path), metadata={**meta, "seed": "4"})
    with pytest.raises(UserError, match="does not fit its rebuilt base"):
        load_delta(path)
    with pytest.raises(UserError, match="no delta at"):
        load_delta(tmp_path / "nothing")
