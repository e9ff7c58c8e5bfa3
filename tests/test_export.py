"""Preprocessing travels with the weights: a loaded delta's `pretrained_cfg` is the run's eval
preprocessing and classes, and `export` writes timm's config.json beside the weights, so plain timm (its
printed one-line load, resolve_data_config, create_transform) predicts what `predict` predicts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from conftest import TINY, write_recipe
from partial_ft import load_delta
from partial_ft import recipe as recipes
from partial_ft import train
from partial_ft.__main__ import main

# a run at 40 px with a crop, bilinear, and its own normalisation: nothing like timm's 224 px defaults
DATA = {"input_size": 40, "crop_pct": 0.875, "interpolation": "bilinear", "mean": [0.4, 0.45, 0.5],
        "std": [0.2, 0.25, 0.3]}
# what timm's resolve_data_config must give for it (written down, not read back from the run)
EXPECTED = {"input_size": (3, 40, 40), "interpolation": "bilinear", "mean": (0.4, 0.45, 0.5),
            "std": (0.2, 0.25, 0.3), "crop_pct": 0.875, "crop_mode": "center"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    recipe = {**TINY, "data": {**TINY["data"], **DATA}, "train": {**TINY["train"], "max_steps": 2},
              "output": {"dir": str(root / "run")}}
    train.run(recipes.load(write_recipe(root / "r.yaml", recipe)))
    return root / "run"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Digits saved at sizes that are neither square nor the model's, so resizing and cropping matter."""
    from partial_ft.data_sources import digits

    folder = tmp_path_factory.mktemp("images")
    for i, row in enumerate(digits()["validation"].select(range(6))):
        row["image"].convert("RGB").resize((30 + 7 * i, 52 - 3 * i), Image.BICUBIC).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def predicted(run, images, tmp_path_factory) -> list[dict]:
    """`predict`'s JSON lines for the images, every class's probability (top-k = all 10)."""
    out = tmp_path_factory.mktemp("predicted") / "p.jsonl"
    assert main(["predict", str(run), str(images), "--top-k", "10", "--out", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_load_delta_carries_the_runs_preprocessing_and_classes(run):
    model = load_delta(run)
    assert timm.data.resolve_data_config({}, model=model) == EXPECTED
    assert model.pretrained_cfg["num_classes"] == 10
    assert model.pretrained_cfg["label_names"] == [str(i) for i in range(10)]


@pytest.mark.parametrize("name, loads_folder", [("model.safetensors", True), ("digits-40px.safetensors", False)])
def test_plain_timm_with_the_written_config_predicts_what_predict_predicts(run, predicted, tmp_path, capsys,
                                                                         name, loads_folder):
    out = tmp_path / "exported" / name
    assert main(["export", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    load = next(line.strip() for line in printed if line.strip().startswith("model = timm.create_model("))
    assert ("local-dir:" in load) == loads_folder
    config = json.loads((out.parent / "config.json").read_text())
    assert (config["architecture"], config["num_classes"]) == ("test_resnet", 10)
    assert config["label_names"] == [str(i) for i in range(10)]
    assert {k: config["pretrained_cfg"][k] for k in EXPECTED} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in EXPECTED.items()}

    scope = {"timm": timm}
    exec(load, scope)  # the very line export printed, in plain timm
    model = scope["model"].eval()
    data_config = timm.data.resolve_data_config({}, model=model)
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()} == EXPECTED  # JSON: lists
    transform = timm.data.create_transform(**data_config)

    assert len(predicted) == 6
    for record in predicted:
        x = transform(Image.open(record["input"]).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            probs = model(x).softmax(dim=1)[0]
        expected = torch.tensor([probs[int(label)].item() for label in record["labels"]])
        assert torch.allclose(torch.tensor(record["scores"]), expected, rtol=0, atol=1e-5), record["input"]
