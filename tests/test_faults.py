"""Faults lose nothing: a NaN loss stops the run (keeping its last good checkpoint) or skips the batch;
long runs keep their metrics, progress and a bounded number of checkpoints."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from partial_ft import checkpoints, load_delta
from partial_ft.__main__ import main
from partial_ft.checkpoints import prune as prune_checkpoints


def _nan_at(monkeypatch, calls: set[int]) -> None:
    """Make the training loss NaN at the given (1-based) loss computations; evaluation is unaffected
    (it uses nn.functional.cross_entropy). Test-only: the code under test is unchanged."""
    forward, count = nn.CrossEntropyLoss.forward, [0]

    def poisoned(self, logits, target):
        count[0] += 1
        loss = forward(self, logits, target)
        return loss * float("nan") if count[0] in calls else loss

    monkeypatch.setattr(nn.CrossEntropyLoss, "forward", poisoned)


def _lines(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_nan_loss_stops_at_that_step_keeps_the_checkpoint_and_resumes_skipping(tiny_recipe, tmp_path, monkeypatch,
                                                                             capsys):
    recipe = tiny_recipe("nan", train={"max_steps": 4, "checkpoint_every": 2})
    run_dir = tmp_path / "runs" / "nan"
    _nan_at(monkeypatch, {3})
    with pytest.raises(SystemExit) as e:
        main(["--recipe", str(recipe)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    last = checkpoints.latest(run_dir)
    assert last is not None and json.loads((last / "train_state.json").read_text())["step"] == 2
    assert err == (f"error: loss is nan at step 3 (epoch 1); stopped, last good checkpoint: {last}; lower "
                   "train.lr, set train.clip_grad, or set train.nan_policy=skip_batch (and --resume)")
    assert not (run_dir / "summary.json").exists() and not (run_dir / "delta.safetensors").exists()

    # what the message suggests works: resume from that checkpoint, skipping the bad batch
    _nan_at(monkeypatch, {1})  # the first loss after resuming is the one that failed
    assert main(["--recipe", str(recipe), "train.nan_policy=skip_batch", "--resume"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["nan_skipped_batches"] == 1 and summary["steps"] == 4
    assert all(torch.isfinite(v).all() for v in load_delta(run_dir).state_dict().values())


def test_nan_policy_skip_batch_does_not_step_on_the_bad_batch(tiny_recipe, tmp_path, monkeypatch):
    recipe = tiny_recipe("skip", train={"max_steps": 4, "nan_policy": "skip_batch"})
    _nan_at(monkeypatch, {2, 3})
    assert main(["--recipe", str(recipe)]) == 0
    summary = json.loads((tmp_path / "runs" / "skip" / "summary.json").read_text())
    assert summary["nan_skipped_batches"] == 2 and summary["steps"] == 4  # 6 batches for 4 updates
    metrics = _lines(tmp_path / "runs" / "skip")
    assert math.isfinite(metrics[-1]["train_loss"])  # the skipped losses are not averaged in
    assert all(torch.isfinite(v).all() for v in load_delta(tmp_path / "runs" / "skip").state_dict().values())


@pytest.mark.parametrize("keep, latest, kept", [
    (1, "step-05", ["step-05"]),
    (2, "step-05", ["step-03", "step-05"]),
    (3, "step-05", ["step-02", "step-03", "step-05"]),
    (None, "step-05", ["step-01", "step-02", "step-03", "step-05"]),
    (1, "step-02", ["step-02"]),  # what `latest` names is never removed, newest or not
    (2, "step-02", ["step-02", "step-05"]),
])
def test_pruning_keeps_the_newest_and_never_the_latest(tmp_path, keep, latest, kept):
    root = tmp_path / "checkpoints"
    for name in ("step-01", "step-02", "step-03", "step-05", ".tmp-step-06"):  # the last: a write cut short
        (root / name).mkdir(parents=True)
    (root / "latest").write_text(latest + "\n")
    prune_checkpoints(root, keep)
    assert sorted(f.name for f in root.iterdir() if f.is_dir()) == kept


def test_many_epochs_keep_metrics_progress_and_bounded_checkpoints(tiny_recipe, tmp_path, monkeypatch, capsys):
    recipe = tiny_recipe("long", data={"max_train_samples": 32, "max_val_samples": 16},
                         train={"epochs": 6, "max_steps": None, "batch_size": 16, "checkpoint_every": 1,
                                "keep_checkpoints": 2, "progress": True, "log_every": 1})
    run_dir = tmp_path / "runs" / "long"
    seen: list[list[str]] = []
    save = checkpoints.save

    def save_and_look(*args, **kwargs):
        folder = save(*args, **kwargs)
        seen.append(sorted(f.name for f in (run_dir / "checkpoints").iterdir() if f.is_dir()))
        assert (run_dir / "checkpoints" / "latest").read_text().strip() == folder.name
        return folder

    monkeypatch.setattr(checkpoints, "save", save_and_look)
    assert main(["--recipe", str(recipe)]) == 0
    assert [m["epoch"] for m in _lines(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert [m["step"] for m in _lines(run_dir)] == [2, 4, 6, 8, 10, 12]
    assert len(seen) == 11  # mid-epoch (step 1 of 2) in each epoch, plus the end of each epoch but the last
    assert [len(names) for names in seen] == [1] + [2] * 10  # never more than keep_checkpoints
    assert seen[-1][-1].startswith("step-00000011")
    assert not (run_dir / "checkpoints").exists()  # finished: the delta is what the run keeps
    out = capsys.readouterr()
    assert "epoch 6/6" in out.err and out.out.count("val_top1") == 7  # a bar per epoch; 6 epoch lines + summary
