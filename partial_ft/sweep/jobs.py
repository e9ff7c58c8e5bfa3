"""One run of a sweep: its raw recipe and folder, and training it in this process, in a `python -m
partial_ft` subprocess or under `accelerate launch`, with its carve-out accuracy reported after each epoch
so that a pruner can stop it (in this process through the training loop's `on_epoch_end`; in a
subprocess by SIGTERM, on which the run checkpoints as it always does).

A finished run folder is reused only when the recipe it recorded is the one the sweep would run now
(the keys that do not change numbers aside); otherwise it trains again.
"""
from __future__ import annotations

import json
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from .. import checkpoints, recipe as recipes, rundir
from ..errors import UserError
from ..signals import WATCHED, Interrupted

LAUNCHERS = ("python", "accelerate", "inprocess")
POLL_SECONDS = 0.5  # how often a subprocess run's metrics.jsonl is read for its epochs' accuracy
# what a sweep keeps of a run's summary (in the study, for the tables; the run folder keeps the rest)
KEPT = ("val_top1", "val_top5", "learned_params", "learned_fraction", "total_params", "delta_bytes",
        "train_seconds", "peak_memory_bytes", "train_images_per_second", "model", "steps", "epochs")

Report = Callable[[int, float], bool]  # (epoch, carve-out top-1) -> stop this run now
Told = Callable[[dict], bool]  # an epoch's metrics line -> stop this run now


@dataclass
class Job:
    """One run: its folder, its raw recipe, and what it is, in words."""

    run_dir: Path
    raw: dict
    where: str
    extra: dict = field(default_factory=dict)


@dataclass
class Outcome:
    """How a run ended: 'complete', 'reused' (finished before, same recipe), 'pruned' or 'failed'."""

    state: str
    summary: Optional[dict] = None
    error: Optional[str] = None
    epochs: int = 0  # epochs it reached
    top1: Optional[float] = None  # its last accuracy
    seconds: float = 0.0  # its training seconds (a pruned run's up to where it stopped)
    steps: int = 0  # optimizer steps it trained (a pruned run's up to where it stopped)


def make_raw(base: dict, overrides: list[str], spec: dict, seed: int, run_dir: Path,
             tune_fraction: Optional[float] = None) -> dict:
    """The raw recipe of one run: base + overrides, the strategy, the seed, the folder (and the carve-out)."""
    raw = recipes.apply_overrides(base, overrides)
    raw["strategy"] = spec
    raw.setdefault("train", {})["seed"] = seed
    raw["train"]["progress"] = False
    raw.setdefault("output", {})["dir"] = str(run_dir)
    if tune_fraction is not None:
        raw.setdefault("data", {}).update(tune_fraction=tune_fraction, tune_seed=0)
    return raw


def preflight(jobs: list[Job]) -> None:
    """Every run's recipe is validated before the first one starts; the first invalid one is named."""
    for job in jobs:
        try:
            recipes.from_dict(job.raw, name=job.run_dir.name)
        except UserError as e:
            raise UserError(f"{job.where}: {e}") from None


def kept(summary: dict) -> dict:
    """The part of a summary the sweep's tables need."""
    return {k: summary.get(k) for k in KEPT}


def finished_before(job: Job) -> Optional[dict]:
    """The summary of a finished run in the job's folder whose recorded recipe is the job's; else None."""
    if not (job.run_dir / rundir.SUMMARY).is_file():
        return None
    folder = rundir.RunFolder(job.run_dir)
    try:
        old = folder.read_recipe()
        summary = folder.read_summary()
    except UserError:
        return None  # unreadable: train it again
    same = not recipes.differences(old, recipes.from_dict(job.raw, name=job.run_dir.name))
    return summary if same and isinstance(summary, dict) else None


def _mode(job: Job) -> tuple[bool, bool]:
    """(overwrite, resume): resume a run that stopped at a checkpoint (a worker taking over a dead one's run),
    else start afresh."""
    try:
        stopped = checkpoints.latest(job.run_dir) is not None and not (job.run_dir / rundir.SUMMARY).is_file()
    except UserError:  # a damaged checkpoint record: start afresh
        stopped = False
    return (False, True) if stopped else (True, False)


def _stopper(job: Job, report: Optional[Report]) -> Optional[Told]:
    """`report`, told every epoch; its wish to stop is granted before the last epoch only (a run that has
    trained to its end finishes: a stop while finishing would only lose the finished run)."""
    if report is None:
        return None
    train = recipes.from_dict(job.raw, name=job.run_dir.name).train

    def told(metrics: dict) -> bool:
        stop = report(metrics["epoch"], metrics["val_top1"])
        last = metrics["epoch"] >= train.epochs or bool(train.max_steps and metrics["step"] >= train.max_steps)
        return stop and not last

    return told


def run_job(job: Job, launcher: str, report: Optional[Report] = None, device: Optional[str] = None) -> Outcome:
    """Train one run (unless finished before with the same recipe); `report(epoch, top1)` hears each
    epoch's accuracy on the run's validation split and returns True to stop the run (pruned)."""
    summary = finished_before(job)
    if summary is not None:
        return Outcome("reused", summary, epochs=summary.get("epochs") or 0, top1=summary["val_top1"],
                       seconds=summary.get("train_seconds", 0.0), steps=summary.get("steps") or 0)
    job.run_dir.parent.mkdir(parents=True, exist_ok=True)
    recipe_path = job.run_dir.parent / f"{job.run_dir.name}.yaml"
    recipe_path.write_text(yaml.safe_dump(job.raw, sort_keys=False))
    if launcher == "inprocess":
        return _in_process(job, recipe_path, _stopper(job, report))
    return _subprocess(job, recipe_path, launcher, _stopper(job, report), device)


def _in_process(job: Job, recipe_path: Path, told: Optional[Told]) -> Outcome:
    from ..train import run  # the training stack, only when this process trains

    seen: list[dict] = []
    stopped = []

    def on_epoch_end(metrics: dict) -> bool:
        seen.append(metrics)
        if told is not None and told(metrics):
            stopped.append(metrics["epoch"])
        return bool(stopped)

    overwrite, resume = _mode(job)
    log = job.run_dir.parent / f"{job.run_dir.name}.log"  # the run's own lines, as a subprocess run's are not shown
    try:
        with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            try:
                summary = run(recipes.load(recipe_path), overwrite=overwrite, resume=resume, on_epoch_end=on_epoch_end)
            except UserError:
                if not resume:
                    raise
                seen.clear()  # it cannot be resumed (its data changed): start afresh
                summary = run(recipes.load(recipe_path), overwrite=True, on_epoch_end=on_epoch_end)
    except Interrupted:
        if stopped:
            return _pruned(seen)
        raise
    except UserError as e:
        return Outcome("failed", error=str(e))
    return _complete(summary, len(seen))


def _complete(summary: dict, epochs: int) -> Outcome:
    return Outcome("complete", summary, epochs=epochs, top1=summary["val_top1"], seconds=summary["train_seconds"],
                   steps=summary.get("steps") or 0)


def _pruned(seen: list[dict]) -> Outcome:
    last = seen[-1]
    return Outcome("pruned", epochs=last["epoch"], top1=last["val_top1"], seconds=last.get("train_seconds", 0.0),
                   steps=last.get("step") or 0)


def _identity(path: Path) -> Optional[tuple[int, int]]:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _metrics(path: Path, have: int, stale: Optional[tuple[int, int]]) -> list[dict]:
    """Whole lines of metrics.jsonl past the first `have` (a line being written waits for the next look);
    nothing while the file is still the `stale` one an --overwrite is about to replace."""
    if stale is not None and _identity(path) == stale:
        return []
    try:
        lines = path.read_text().split("\n")[:-1]  # the last piece: no newline yet, or empty
    except OSError:
        return []
    out = []
    for line in lines[have:]:
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def _subprocess(job: Job, recipe_path: Path, launcher: str, told: Optional[Told],
                device: Optional[str]) -> Outcome:
    overwrite, resume = _mode(job)
    outcome = _launch(job, recipe_path, launcher, told, device, resume)
    if resume and outcome.state == "failed" and "resume" in (outcome.error or ""):
        outcome = _launch(job, recipe_path, launcher, told, device, False)  # cannot resume: start afresh
    return outcome


def _launch(job: Job, recipe_path: Path, launcher: str, told: Optional[Told], device: Optional[str],
            resume: bool) -> Outcome:
    # `accelerate launch` of this interpreter's accelerate, not whichever `accelerate` is first on PATH
    launch = [sys.executable, "-m", "accelerate.commands.launch"] if launcher == "accelerate" else [sys.executable]
    env = {**os.environ, WATCHED: str(os.getpid()),  # the run stops when this process is gone
           **({"CUDA_VISIBLE_DEVICES": device} if device is not None else {})}
    metrics_path = job.run_dir / rundir.METRICS
    stale = None if resume else _identity(metrics_path)
    seen: list[dict] = []
    pruned = False
    stderr = job.run_dir.parent / f".{job.run_dir.name}.stderr"
    with stderr.open("w") as err:
        # its own process group: a pruning SIGTERM reaches every process of an `accelerate launch`
        p = subprocess.Popen([*launch, "-m", "partial_ft", "--recipe", str(recipe_path),
                              "--resume" if resume else "--overwrite"], env=env, stdout=subprocess.DEVNULL,
                             stderr=err, start_new_session=True)
        try:
            while True:
                done = p.poll() is not None  # then one last look at what it wrote
                for metrics in _metrics(metrics_path, len(seen), stale):
                    seen.append(metrics)
                    if not pruned and told is not None and told(metrics):
                        pruned = True
                        if p.poll() is None:
                            os.killpg(p.pid, signal.SIGTERM)  # it checkpoints and stops
                if done:
                    break
                time.sleep(POLL_SECONDS)
        except BaseException:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait()
            raise
    text = stderr.read_text()
    stderr.unlink(missing_ok=True)
    if pruned:
        return _pruned(seen)
    if p.returncode != 0:
        lines = [line for line in text.splitlines() if line.strip()]
        error = next((line for line in reversed(lines) if line.startswith("error:")), "\n".join(lines[-15:]))
        return Outcome("failed", error=error.removeprefix("error: ") or f"exit code {p.returncode}")
    summary = rundir.RunFolder(job.run_dir).read_summary()
    return _complete(summary, len(seen))
