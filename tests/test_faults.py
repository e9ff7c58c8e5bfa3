"""Faults lose nothing: a NaN loss stops the run (keeping its last good checkpoint) or skips the batch;
long runs keep their metrics, progress and a bounded number of checkpoints."""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from partial_ft import checkpoints, load_delta
from partial_ft.__main__ import main
from partial_ft.checkpoints import prune as prune_checkpoints
from partial_ft.errors import UserError


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


def test_pruning_never_deletes_through_a_link(tmp_path):
    """A checkpoint entry that is a link to the user's folder is left alone (its target is not the run's);
    a checkpoints/ that is a link is refused before anything is written or pruned through it."""
    user = tmp_path / "user"
    for name in ("step-00", "notes"):
        (user / name).mkdir(parents=True)
        (user / name / "keep.txt").write_text("mine")
    root = tmp_path / "run" / "checkpoints"
    for name in ("step-01", "step-02"):
        (root / name).mkdir(parents=True)
    (root / "step-00").symlink_to(user / "step-00")
    (root / "latest").write_text("step-02\n")
    prune_checkpoints(root, 1)
    assert sorted(f.name for f in root.iterdir()) == ["latest", "step-00", "step-02"]
    shutil.rmtree(root)
    root.symlink_to(user)
    with pytest.raises(UserError, match="checkpoints is a symbolic link"):
        checkpoints.save(None, tmp_path / "run", {"step": 3, "epoch": 0, "batches": 3}, keep=1)
    assert sorted(str(f.relative_to(user)) for f in user.rglob("*")) == ["notes", "notes/keep.txt", "step-00",
                                                                         "step-00/keep.txt"]


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


# --------------------------------------------------------------------------------------------
# a full disk, a read-only place, a name too long, a wrong kind: one `error:` line naming the path,
# nothing half-written, the last good file kept


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> tuple[Path, Path]:
    """A finished tiny run and a folder of three digit images: (run folder, images)."""
    from conftest import TINY, write_recipe
    from partial_ft.data_sources import digits

    root = tmp_path_factory.mktemp("done")
    recipe = write_recipe(root / "done.yaml", {**TINY, "output": {"dir": str(root / "run")}})
    assert main(["--recipe", str(recipe)]) == 0
    (root / "images").mkdir()
    for i, row in enumerate(digits()["validation"].select(range(3))):
        row["image"].save(root / "images" / f"{i}.png")
    return root / "run", root / "images"


def _fsync_fails(code: int):
    def fail(fd):
        raise OSError(code, os.strerror(code))
    return fail


LONG = "n" * 300 + ".safetensors"
# id: (argv with RUN / IMAGES / OUT for paths, errno the flush fails with (None: none), what the line names)
FULL = {
    "export-no-space": (["export", "RUN", "--out", "OUT/model.safetensors"], errno.ENOSPC, "OUT/model.safetensors"),
    "predict-no-space": (["predict", "RUN", "IMAGES", "--out", "OUT/p.jsonl"], errno.ENOSPC, "OUT/p.jsonl"),
    "push-no-space": (["push", "RUN", "me/x", "--local-dir", "OUT/pushed"], errno.ENOSPC, "OUT/pushed"),
    "eval-read-only": (["eval", "RUN"], errno.EROFS, "RUN/eval.json"),
    "eval-json-is-a-folder": (["eval", "RUN"], None, "RUN/eval.json: something the run did not write"),
    "export-name-too-long": (["export", "RUN", "--out", f"OUT/{LONG}"], None, "longer than 255 bytes"),
    "predict-quota": (["predict", "RUN", "IMAGES", "--out", "OUT/p.jsonl"], errno.EDQUOT, "OUT/p.jsonl"),
}


def _hashes(*folders: Path) -> dict[str, str]:
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for d in folders for f in sorted(d.rglob("*"))
            if f.is_file()}


@pytest.mark.parametrize("case", FULL)
def test_write_failures_are_one_error_line_and_keep_the_last_good_state(case, done, tmp_path, monkeypatch, capsys):
    argv, code, named = FULL[case]
    run, images = tmp_path / "run", done[1]
    shutil.copytree(done[0], run)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the last good export")
    (out / "p.jsonl").write_text('{"the last good": "predictions"}\n')
    if case == "eval-json-is-a-folder":
        (run / "eval.json").mkdir()
    before = _hashes(run, out, images)
    paths = {"RUN": str(run), "IMAGES": str(images)}
    argv = [paths.get(a, a.replace("OUT/", f"{out}/")) for a in argv]
    if code is not None:
        monkeypatch.setattr(os, "fsync", _fsync_fails(code))
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err[-3000:]
    assert named.replace("OUT/", f"{out}/").replace("RUN/", f"{run}/") in err
    assert _hashes(run, out, images) == before  # nothing replaced, nothing half-written, no temporary file
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "p.jsonl"]


@pytest.mark.parametrize("watched, code", [("gone", 143), ("alive", 0)])
def test_a_run_started_by_a_sweep_stops_when_the_sweep_is_gone(watched, code):
    """$PARTIAL_FT_STOP_WITH names the sweep that started a run: once that process is gone (here: one that
    has exited) the run SIGTERMs itself, which checkpoints and stops; while it lives (this test) nothing happens."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    pid = gone.pid if watched == "gone" else os.getpid()
    child = ("import signal, sys, time\n"
             "from partial_ft.signals import stop_with_watched\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
             "stop_with_watched()\n"
             "time.sleep(4)\n")
    p = subprocess.run([sys.executable, "-c", child], env={**os.environ, "PARTIAL_FT_STOP_WITH": str(pid)}, timeout=120)
    assert p.returncode == code
