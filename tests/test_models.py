"""models.py: timm creation by name, model.kwargs, local checkpoints as starting weights (really used, the
classifier adapted to the new classes), and the one-line errors. In-process and offline; the CLI error
runs (pretrained weights offline, a checkpoint that does not fit) are in test_data.py's error table."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from partial_ft import models
from partial_ft.errors import UserError
from partial_ft.sections import DataCfg, ModelCfg
from partial_ft.layers import classifier_params


def _save(state: dict, path) -> None:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


@pytest.fixture(scope="module")
def source_state() -> dict:
    """A test_resnet with 7 classes whose weights differ from any seeded init we build below."""
    torch.manual_seed(1234)
    model = timm.create_model("test_resnet", num_classes=7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # also moves BatchNorm affine params off their 1/0 init
        for name, b in model.named_buffers():
            if "running_mean" in name:
                b.normal_()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("wrap", [
    pytest.param(lambda s: s, id="safetensors"),
    pytest.param(lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}, "epoch": 3}, id="pth-wrapped"),
    pytest.param(lambda s: {"model": {f"_orig_mod.{k}": v for k, v in s.items()}}, id="pth-model-compiled"),
    # a timm train.py checkpoint: the weights as trained are used, not the EMA copy; `args` loads (weights_only)
    pytest.param(lambda s: {"state_dict": s, "state_dict_ema": {k: v + 1 for k, v in s.items()},
                            "args": argparse.Namespace(lr=0.1)}, id="pth-timm-train-ema"),
])
def test_checkpoint_is_used_and_head_adapted(tmp_path, source_state, wrap, request):
    """Backbone weights equal the file's; the classifier is new, sized for 3 classes, at its seeded init."""
    suffix = ".safetensors" if request.node.callspec.id == "safetensors" else ".pth"
    path = tmp_path / f"start{suffix}"
    _save(wrap(source_state), path)
    model, init_model = models.build(ModelCfg(name="test_resnet", checkpoint=str(path)), num_classes=3, seed=0)
    own = model.state_dict()
    head = classifier_params(model)
    assert head == {"fc.weight", "fc.bias"}
    assert own["fc.weight"].shape == (3, source_state["fc.weight"].shape[1])
    for key, value in source_state.items():
        if key not in head:
            assert torch.equal(own[key], value), key
    # the new head is the seeded init, the same as a model built without the checkpoint
    fresh, _ = models.build(ModelCfg(name="test_resnet"), num_classes=3, seed=0)
    assert torch.equal(own["fc.weight"], fresh.state_dict()["fc.weight"])
    assert not torch.equal(own["conv1.0.weight"], fresh.state_dict()["conv1.0.weight"])
    # init_model is a fresh random init (what `fixed: random` re-draws from), not the checkpoint
    assert not torch.equal(init_model().state_dict()["conv1.0.weight"], source_state["conv1.0.weight"])


def test_checkpoint_same_classes_keeps_head_and_headless_loads(tmp_path, source_state):
    path = tmp_path / "same.pth"
    _save(source_state, path)
    model, _ = models.build(ModelCfg(name="test_resnet", checkpoint=str(path)), num_classes=7)
    assert torch.equal(model.state_dict()["fc.weight"], source_state["fc.weight"])
    # a backbone-only file (no classifier keys, no num_batches_tracked) is a fine starting point too
    headless = {k: v for k, v in source_state.items() if not k.startswith("fc.") and "num_batches" not in k}
    path = tmp_path / "backbone.safetensors"
    _save(headless, path)
    model, _ = models.build(ModelCfg(name="test_resnet", checkpoint=str(path)), num_classes=2)
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], source_state["layer1.0.conv1.weight"])


def test_checkpoint_that_does_not_fit(tmp_path, source_state):
    # another architecture: names the missing and unexpected keys
    other = timm.create_model("test_efficientnet", num_classes=7).state_dict()
    path = tmp_path / "effnet.safetensors"
    _save(other, path)
    with pytest.raises(UserError) as e:
        models.build(ModelCfg(name="test_resnet", checkpoint=str(path)), num_classes=3)
    text = _one_line(e)
    assert "does not fit model 'test_resnet'" in text and "missing keys conv1.0.weight" in text
    assert "unexpected keys blocks.0.0.bn1.bias" in text and "shape mismatch bn1.bias (24,) vs model (32,)" in text
    # same keys, one tensor of another shape: names the key and both shapes
    state = dict(source_state)
    state["layer1.0.conv1.weight"] = torch.zeros(5, 32, 3, 3)
    path = tmp_path / "shape.pth"
    _save(state, path)
    with pytest.raises(UserError) as e:
        models.build(ModelCfg(name="test_resnet", checkpoint=str(path)), num_classes=3)
    text = _one_line(e)
    assert "shape mismatch layer1.0.conv1.weight (5, 32, 3, 3) vs model (32, 32, 3, 3)" in text
    assert "missing keys" not in text


@pytest.mark.parametrize("make, expected", [
    (lambda p: p / "absent.safetensors", "checkpoint file not found"),
    (lambda p: (p / "junk.safetensors").write_bytes(b"not safetensors") and p / "junk.safetensors",
     "cannot read checkpoint"),
    (lambda p: (p / "junk.pth").write_bytes(b"not a torch file") and p / "junk.pth", "cannot read checkpoint"),
    (lambda p: torch.save([1, 2], p / "list.pth") or p / "list.pth", "does not hold a state dict of tensors"),
    (lambda p: torch.save({"w": torch.zeros(1), "x": Touch(p / "ran")}, p / "code.pth") or p / "code.pth",
     "cannot read checkpoint {path}: the file holds more than plain tensors"),
], ids=["missing", "bad-safetensors", "bad-pth", "not-a-state-dict", "pickled-code"])
def test_checkpoint_file_errors(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(UserError) as e:
        models.build(ModelCfg(name="test_resnet", checkpoint=str(path)), num_classes=3)
    assert expected.format(path=path) in _one_line(e) and str(path) in str(e.value)
    assert "weights_only=False" not in str(e.value)  # torch's advice to unpickle is never repeated
    assert not (tmp_path / "ran").exists()  # weights_only: the pickled call was refused, never run


class Touch:
    """Unpickling this object creates a file: what a malicious .pth could do instead."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


DEFAULT = {"input_size": (3, 160, 160), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5),
           "std": (0.5, 0.5, 0.5), "crop_pct": 0.95, "crop_mode": "center"}  # test_resnet's pretrained_cfg


@pytest.mark.parametrize("keys, expected", [
    ({}, DEFAULT),
    ({"input_size": 32}, {**DEFAULT, "input_size": (3, 32, 32)}),
    ({"input_size": [48, 40]}, {**DEFAULT, "input_size": (3, 48, 40)}),
    ({"input_size": [1, 48, 40]}, {**DEFAULT, "input_size": (3, 48, 40)}),  # images are RGB: 3 channels
    ({"mean": [0.1, 0.2, 0.3], "std": [0.4]}, {**DEFAULT, "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.4, 0.4)}),
    ({"interpolation": "bicubic", "crop_pct": 1.0}, {**DEFAULT, "interpolation": "bicubic", "crop_pct": 1.0}),
], ids=["model", "size-int", "size-hw", "size-chw", "mean-std", "interp-crop"])
def test_data_config_recipe_keys_over_the_models(keys, expected):
    model = timm.create_model("test_resnet")
    assert models.data_config(model, DataCfg(**keys)) == expected


def test_unknown_model_name_suggests_closest():
    with pytest.raises(UserError) as e:
        ModelCfg(name="resnet181").validate(here=True)
    text = _one_line(e)
    assert text.startswith("unknown timm model 'resnet181'") and "'resnet18'" in text
    with pytest.raises(UserError) as e:  # built without the recipe's check: timm's refusal, as one line
        models.build(ModelCfg(name="resnet181"), num_classes=3)
    assert _one_line(e) == "model.name 'resnet181': Unknown model (resnet181)"
    ModelCfg(name="resnet18.a1_in1k").validate(here=True)  # a pretrained tag is fine
    ModelCfg(name="hf-hub:timm/resnet18.a1_in1k").validate(here=True)  # timm resolves Hub names itself


def test_model_kwargs():
    model, init_model = models.build(ModelCfg(name="test_resnet", kwargs={"drop_path_rate": 0.1}), num_classes=3)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "DropPath" in kinds and "DropPath" in {type(m).__name__ for m in init_model().modules()}
    with pytest.raises(UserError) as e:
        models.build(ModelCfg(name="test_resnet", kwargs={"no_such_option": 1}), num_classes=3)
    assert "model.kwargs not accepted by test_resnet" in _one_line(e) and "no_such_option" in str(e.value)


def test_seeded_build_is_reproducible():
    a, _ = models.build(ModelCfg(name="test_resnet"), num_classes=4, seed=5)
    b, _ = models.build(ModelCfg(name="test_resnet"), num_classes=4, seed=5)
    c, _ = models.build(ModelCfg(name="test_resnet"), num_classes=4, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.state_dict()["fc.weight"], c.state_dict()["fc.weight"])
