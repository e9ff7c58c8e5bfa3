"""Experiment tracking (train.log_with) and the training curve: TensorBoard event files under RUN_DIR/logs
hold the recipe, per-step loss / lr / images/s and per-epoch val_top1; a tracker that is unknown or not
installed fails before anything is written; every run folder holds curves.png."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from partial_ft import tracking
from partial_ft.errors import UserError
from partial_ft.sections import TrainCfg


@pytest.mark.parametrize("log_with, message", [
    (["tensorbord"], "unknown tracker 'tensorbord'.*did you mean 'tensorboard'"),
    (["all"], "unknown tracker 'all'"),  # a run names what it logs to
    (["wandb"], r"wandb is not installed \(pip install wandb\)"),
    (["comet_ml"], r"comet_ml is not installed \(pip install comet-ml\)"),
])
def test_unknown_or_missing_trackers_are_refused(log_with, message, monkeypatch):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: ["tensorboard"])
    with pytest.raises(UserError, match=message):
        TrainCfg(log_with=log_with).validate(here=True)
    TrainCfg(log_with=["tensorboard"]).validate(here=True)  # installed: fine


def test_hparams_are_flat_scalars():
    resolved = {"model": {"name": "resnet18", "kwargs": {"drop_path_rate": 0.1}, "checkpoint": None},
                "strategy": [{"name": "head"}], "train": {"lr": 0.001, "compile": False, "log_with": ["tensorboard"]}}
    assert tracking.hparams(resolved) == {
        "model.name": "resnet18", "model.kwargs": '{"drop_path_rate": 0.1}', "model.checkpoint": "null",
        "strategy": '[{"name": "head"}]', "train.lr": 0.001, "train.compile": False,
        "train.log_with": '["tensorboard"]'}


def _scalars(logs: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(logs.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_tensorboard_logs_and_curve_in_the_run_folder(tiny_recipe):
    recipe = tiny_recipe("tracked", train={"epochs": 2, "max_steps": None, "log_every": 2, "log_with": ["tensorboard"],
                                          "checkpoint_every": None},
                         data={"max_train_samples": 128, "max_val_samples": 64})
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 0, result.stderr
    run_dir = recipe.parent / "runs" / "tracked"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    scalars = _scalars(run_dir / "logs")
    assert [(s, pytest.approx(v)) for s, v in scalars["val_top1"]] == [(m["step"], m["val_top1"]) for m in metrics]
    assert [s for s, _ in scalars["loss"]] == [2, 4, 6, 8]  # every log_every steps (4 steps per epoch)
    assert {"lr", "images_per_second", "val_loss"} <= set(scalars)
    assert list((run_dir / "logs").rglob("hparams.yml")), "the recipe as hyperparameters"
    assert (run_dir / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_tracker_fails_before_training(tiny_recipe):
    recipe = tiny_recipe("untracked", train={"log_with": ["tensorboard", "tensorbord"]})
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 2 and result.stderr.startswith("error: train.log_with: unknown tracker 'tensorbord'")
    assert not (recipe.parent / "runs" / "untracked").exists()
