"""Sharing: `push --local-dir` writes exactly the Hub files, and a model loaded from that folder, or from a
Hub repo id in huggingface_hub's cache (offline), predicts as the run folder does; the model card's front
matter is the Hub's metadata. The upload call itself is the one thing not run here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY, write_recipe
from partial_ft import load_delta, modelcard, rundir
from partial_ft import recipe as recipes
from partial_ft import train
from partial_ft.errors import UserError
from partial_ft.hub import HUB_FILES, push, resolve

REPO = "someone/tiny-digits"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    recipe = {**TINY, "strategy": {"name": "head", "norm_stats": "freeze"}, "output": {"dir": str(root / "run")}}
    train.run(recipes.load(write_recipe(root / "tiny.yaml", recipe)))
    return root / "run"


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def test_push_local_dir_writes_exactly_the_hub_files_and_loads_like_the_run(run, tmp_path):
    out = tmp_path / "pushed"
    assert push(run, REPO, local_dir=out) == str(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(HUB_FILES)
    assert json.loads((out / "data.json").read_text()) == {"class_names": [str(i) for i in range(10)]}
    assert (out / "delta.safetensors").read_bytes() == (run / "delta.safetensors").read_bytes()
    assert f'load_delta("{REPO}")' in (out / "README.md").read_text()
    assert torch.equal(_logits(load_delta(str(out))), _logits(load_delta(str(run))))


def test_a_hub_repo_id_loads_from_the_cache_offline(run, tmp_path, monkeypatch):
    """The layout huggingface_hub's cache has after a download: refs/main names a snapshot folder."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "cache" / "models--someone--tiny-digits" / "snapshots" / commit
    push(run, REPO, local_dir=snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    assert resolve(REPO) == snapshot
    assert torch.equal(_logits(load_delta(REPO)), _logits(load_delta(str(run))))
    with pytest.raises(UserError, match="neither a local path nor a Hub repo in the local cache"):
        resolve("someone/not-cached")


@pytest.mark.parametrize("args, message", [
    (dict(repo_id="not a repo id"), "repo id 'not a repo id'"),
    (dict(local_dir="FILE"), "must be a new or empty folder"),
    (dict(local_dir="NEW", private=True), "--private applies to uploads"),
    (dict(run_dir="EMPTY"), "is not a finished run folder"),
    (dict(), "cannot push to someone/tiny-digits"),  # the upload, offline (HF_HUB_OFFLINE=1)
])
def test_push_mistakes_write_nothing(run, tmp_path, args, message):
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "EMPTY").mkdir()
    where = {k: str(tmp_path / v) if k in ("local_dir", "run_dir") else v for k, v in args.items()}
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UserError, match=message):
        push(**{"run_dir": run, "repo_id": REPO, **where})
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("source, message", [
    ("./missing-run", "no delta at ./missing-run: no such run folder or file"),
    ("a/b/c", "no delta at a/b/c"),
    ("bad id!", "nor a Hub repo id"),
])
def test_sources_that_are_neither_paths_nor_repo_ids(source, message):
    with pytest.raises(UserError, match=message):
        resolve(source)


SUMMARY = {"strategy": "block(index=middle)", "learned_params": 530698, "total_params": 11181642,
           "learned_fraction": 0.0475, "val_top1": 0.91, "val_top5": 0.99, "val_loss": 0.3, "epochs": 3, "steps": 90}


CARVED = {"carved_from": "train", "fraction": 0.1, "seed": 0}
DATA_CONFIG = {"input_size": [3, 40, 40], "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5],
               "std": [0.5, 0.5, 0.5], "crop_pct": 0.875, "crop_mode": "center"}


@pytest.mark.parametrize("model, dataset, base, datasets, val_split, split, license", [
    ({"name": "resnet18.a1_in1k", "pretrained": True}, "uoft-cs/cifar10", "timm/resnet18.a1_in1k", ["uoft-cs/cifar10"],
     "validation", "validation", "apache-2.0"),
    ({"name": "resnet18", "pretrained": True}, "cifar10", "timm/resnet18.a1_in1k", ["cifar10"], "test", "test", "mit"),
    ({"name": "resnet18", "pretrained": False}, "digits", None, None,  # random init: no Hub base
     CARVED, "train (seeded carve-out, 0.1)", None),
    ({"name": "resnet18", "pretrained": True, "checkpoint": "/w/base.safetensors"}, "./data/folder", None, None,
     "validation", "validation", "cc-by-nc-4.0"),
])
def test_model_card_front_matter_is_hub_metadata(model, dataset, base, datasets, val_split, split, license):
    """Every card parses with huggingface_hub's ModelCard / ModelCardData (offline), and its fields are
    the ones written down here: no literal quotes in the split, `license: other` when none was given."""
    from huggingface_hub import ModelCard

    recipe = {"model": {"checkpoint": None, "kwargs": {}, **model}, "data": {"dataset": dataset},
              "strategy": {"name": "block"}, "train": {"seed": 0}, "output": {"dir": None}}
    text = modelcard.render(recipe, {**SUMMARY, "data_config": DATA_CONFIG}, [f"c{i}" for i in range(10)],
                            "layer  learned", val_split, REPO, license)
    card = ModelCard(text, ignore_metadata_errors=False)
    data = card.data
    assert (data.library_name, data.base_model, data.datasets, data.license) == (
        "partial_ft", base, datasets, license or "other")
    assert "partial_ft" in data.tags and data.metrics == ["accuracy"] and data.model_name == REPO
    assert [(r.metric_type, r.metric_value, r.dataset_split) for r in data.eval_results] == [
        ("accuracy", 0.91, split), ("top_5_accuracy", 0.99, split)]
    assert "''" not in text  # the split once carried literal quotes ('''validation''')
    body = card.text
    for line in ("530,698 of 11,181,642 parameters (4.75%)", "block(index=middle)", "top-1 0.9100",
                 f'load_delta("{REPO}")', "export someone/tiny-digits --out exported/model.safetensors",
                 'timm.create_model("local-dir:exported", pretrained=True)', "resolve_data_config({}, model=model)",
                 "40×40 px, bilinear interpolation, crop 0.875 (center)", "layer  learned", "## Recipe",
                 "No license was given" if license is None else f"License: `{license}`."):
        assert line in body, line
    assert ("No license was given" in body) == (license is None)


def test_push_license_must_be_a_hub_license_id(run, tmp_path):
    from huggingface_hub import ModelCard

    with pytest.raises(UserError, match="'apache2' is not a Hub license identifier .did you mean 'apache-2.0'"):
        push(run, REPO, local_dir=tmp_path / "out", license="apache2")
    assert not (tmp_path / "out").exists()
    push(run, REPO, local_dir=tmp_path / "out", license="apache-2.0")
    assert ModelCard.load(tmp_path / "out" / "README.md").data.license == "apache-2.0"


def test_run_folder_card_parses_with_huggingface_hub(run):
    from huggingface_hub import ModelCard

    card = ModelCard(rundir.card(run))
    assert card.data.library_name == "partial_ft" and card.data.model_name == "test_resnet"
    assert card.data.license == "other" and card.data.eval_results[0].dataset_split == "validation"
    assert card.data.eval_results[0].metric_value == json.loads((run / "summary.json").read_text())["val_top1"]


def test_cli_push_local_dir_then_predict_from_it_equals_the_run(run, tmp_path, capsys):
    from partial_ft.__main__ import main
    from partial_ft.data_sources import digits

    images = tmp_path / "images"
    images.mkdir()
    for i, row in enumerate(digits()["validation"].select(range(6))):
        row["image"].save(images / f"{i}.png")
    assert main(["push", str(run), REPO, "--local-dir", str(tmp_path / "pushed")]) == 0
    assert f"to {tmp_path / 'pushed'}" in capsys.readouterr().out
    for source, out in ((run, "run.jsonl"), (tmp_path / "pushed", "pushed.jsonl")):
        assert main(["predict", str(source), str(images), "--top-k", "3", "--out", str(tmp_path / out)]) == 0
    lines = (tmp_path / "run.jsonl").read_text().splitlines()
    assert len(lines) == 6 and (tmp_path / "pushed.jsonl").read_text().splitlines() == lines
    assert [json.loads(line)["input"] for line in lines] == [str(images / f"{i}.png") for i in range(6)]
    assert "predicted 6 images with 1 source; wrote" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["predict", "RUN", "IMAGES", "--ensemble"], "--ensemble averages several SOURCEs"),
    (["predict", "RUN", "IMAGES", "--top-k", "0"], "--top-k and --batch-size must be at least 1"),
    (["predict", "RUN", "IMAGES", "--batch-size", "1000000000"], "--batch-size at most 16,384 (got 5 and 1,000,000,000)"),
    (["predict", "RUN", "IMAGES", "--batch-size", "16385"], "--batch-size at most 16,384"),
    (["predict", "RUN", "IMAGES", "--out", "NOWHERE/p.jsonl"], "does not exist"),
    (["predict", "someone/not-cached", "IMAGES"], "nor a Hub repo in the local cache"),
    (["predict", "RUN", "NOWHERE"], "no such file or folder"),
    (["push", "RUN", REPO], "cannot push to someone/tiny-digits"),  # offline: the upload is refused
    (["push", "RUN", REPO, "--license", "Apache 2"], "'Apache 2' is not a Hub license identifier"),
    (["eval", "someone/not-cached"], "nor a Hub repo in the local cache"),
    (["export", "./nope", "--out", "OUT.safetensors"], "no delta at ./nope"),
])
def test_cli_mistakes_are_one_error_line(run, tmp_path, capsys, argv, message):
    from partial_ft.__main__ import main

    (tmp_path / "IMAGES").mkdir()
    (tmp_path / "IMAGES" / "a.png").write_bytes(b"")
    where = {"RUN": str(run), "IMAGES": str(tmp_path / "IMAGES"), "NOWHERE/p.jsonl": str(tmp_path / "x" / "p.jsonl"),
             "NOWHERE": str(tmp_path / "nowhere"), "OUT.safetensors": str(tmp_path / "o.safetensors")}
    with pytest.raises(SystemExit) as exit_:
        main([where.get(a, a) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IMAGES"]
