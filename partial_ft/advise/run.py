"""`python -m partial_ft advise`: the driver. Check what was asked (nothing is written before the checks
pass), size the candidates, measure and tune them as the time plan says, write the report; on SIGTERM /
Ctrl-C the report of what is done so far.

The advise folder holds advice.md, the plot, advised.yaml, state.json (what each candidate measured and
found: a second advise on the folder continues from it), the tuning study (the sweep engine's), one run
folder per measured epoch (measure/) and per trial (tune/), and trained/ (--train).
"""
from __future__ import annotations

import functools
import math
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .. import recipe as recipes
from ..atomic import check_writable
from ..errors import UserError
from ..runlock import hold_folder
from ..signals import Interrupted, Stopped, stop_on_signals
from ..train import run
from . import candidates, check, report, state
from .measure import measure
from .table import SKIPPED, Row
from .timeplan import cuts, next_step, settle, trial_seconds
from .tuning import Tuner, study_name, write_base

TUNE_FRACTION, TUNE_SEED = state.CARVE_OUT  # the carve-out of train every candidate is tuned on
LOCK = ".advise.lock"


@dataclass
class Request:
    """What the user asked for (the command line, parsed)."""

    recipe: str
    budget: float = 0.02
    seconds: float = 1800.0
    time_text: str = "30m"
    out: Optional[str] = None
    train: bool = False
    overrides: list[str] = field(default_factory=list)
    storage: Optional[str] = None
    worker: bool = False
    trials: int = 6  # learning rates tried per candidate, at most
    launcher: str = "inprocess"


@dataclass
class Outcome:
    """What advise leaves: the report's text, the recommended row, and the signal that stopped it (if any)."""

    text: str
    choice: Optional[Row]
    signum: Optional[int] = None
    val_top1: Optional[float] = None
    folder: Optional[Path] = None


def advise(req: Request) -> Outcome:
    """The whole command; a user mistake raises UserError before anything is written."""
    start = time.monotonic()
    recipe = recipes.load(req.recipe, [*req.overrides, f"data.tune_fraction={TUNE_FRACTION}",
                                       f"data.tune_seed={TUNE_SEED}"])
    out = Path(req.out) if req.out else Path("advice") / Path(req.recipe).stem
    _check_out(out)
    task = candidates.load_task(recipe, req.budget)
    base = recipe.to_dict()
    fingerprint = state.fingerprint(base, task.budget)
    n_eval = len(task.bundle.val)
    probe = candidates.size(task, recipe, only=candidates.PROBE)[0]  # the cheapest: it must fit the time
    state.restore(out, fingerprint, [probe])
    _check_time(probe, base, n_eval, req)
    rows = [probe, *(r for r in candidates.size(task, recipe) if r.name != candidates.PROBE)]
    state.restore(out, fingerprint, rows[1:])
    out.mkdir(parents=True, exist_ok=True)
    # the limit as a wall-clock time for the sweep engine: no trial starts after it, a running one stops at its
    # epoch's end (the plan's estimates are from a measured epoch; a machine that slows down would overrun them)
    deadline = time.time() + req.seconds - (time.monotonic() - start)
    tuner = Tuner(req.storage, req.worker, req.launcher, out, n_eval, TUNE_FRACTION, TUNE_SEED, deadline)
    meta = {"budget": task.budget, "total": task.total, "tune_fraction": TUNE_FRACTION, "tune_seed": TUNE_SEED}
    signum = None
    with _hold(out, req.worker), stop_on_signals() as stop:
        save = functools.partial(state.save, out, fingerprint, rows, meta)  # after every step
        save()  # the folder is advice from now on (continuing reads it)
        try:
            _work(rows, base, _measure_root(out, req.worker), tuner, n_eval, start + req.seconds, req.trials, stop,
                  save)
        except (Interrupted, Stopped) as e:
            signum = e.signum
        signum = signum or stop.signum
        settle(rows, req.trials)
        save()
    header = {"recipe": req.recipe, "budget": task.budget, "total": task.total, "time": req.time_text,
              "used": time.monotonic() - start, "n_eval": n_eval, "fraction": TUNE_FRACTION, "seed": TUNE_SEED}
    notes = (["stopped by a signal: this is the report of what was done so far; the same command continues"]
             if signum else []) + cuts(rows, req.trials)
    text, rec = report.write(out, rows, header, state.user_raw(req.recipe), req.overrides, notes, probe)
    if any(r.status != SKIPPED for r in rows):  # the exhaustive check's sweep: its recipe and grid (docs/advise.md)
        write_base(out, base)
        check.write_check_grid(out)
    outcome = Outcome(text, rec.choice if rec else None, signum, folder=out)
    if req.train and rec is not None and not signum:
        outcome.val_top1 = _train(out, rec.choice)
        outcome.text = (out / "advice.md").read_text()
    return outcome


def _check_time(probe: Row, base: dict, n_eval: int, req: Request) -> None:
    """One epoch of the cheapest candidate (the probe) must fit the time: measured in a temporary folder,
    as nothing is written into the advise folder before this check."""
    if probe.status != SKIPPED and probe.epoch_seconds is None:
        with tempfile.TemporaryDirectory() as tmp:
            _measure(base, probe, Path(tmp) / "probe", n_eval)
    if probe.epoch_seconds is not None and trial_seconds(probe) > req.seconds:
        raise UserError(f"--time {req.time_text} is too short: one epoch of the cheapest candidate (the linear "
                        f"probe) was measured at {trial_seconds(probe):.1f} s; give at least that")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    check_writable(out, "--out")
    if out.is_dir() and any(out.iterdir()) and not (out / state.STATE).is_file():
        raise UserError(f"--out {out} is not empty and holds no advice (no {state.STATE}); advise never writes into "
                        "another folder: choose another --out")


def _hold(out: Path, worker: bool):
    """One advise per folder; --worker processes of one study share it."""
    return hold_folder(out / LOCK, worker, f"another advise is running in {out}; wait for it, or join its studies "
                                           "as a worker (--storage URL --worker)")


def _measure_root(out: Path, worker: bool) -> Path:
    """Where this process's one-epoch measurements go: measure/, or for a worker measure/<host>-<pid>/
    (workers measure their own machine, and one run folder has one owner: a shared one would be in use)."""
    return out / "measure" / (f"{socket.gethostname()}-{os.getpid()}" if worker else "")


def _measure(base: dict, row: Row, run_dir: Path, n_eval: int) -> None:
    try:
        measure(base, row, run_dir, n_eval)
    except UserError as e:  # it cannot train on this task (e.g. the probe where features cannot be cached)
        row.status, row.note = SKIPPED, f"cannot run: {e}"
    print(_line(row, "measured"), flush=True)


def _work(rows: list[Row], base: dict, measure_root: Path, tuner: Tuner, n_eval: int, deadline: float, trials: int,
          stop, save: Callable[[], None]) -> None:
    """Measure and tune as the time plan says until nothing more fits, or a signal."""
    for r in rows:
        if r.status == SKIPPED:
            print(f"{r.name}: skipped: {r.note}", flush=True)
    while not stop.signum:
        step = next_step(rows, deadline - time.monotonic(), trials)
        if step is None:
            return
        if step.kind == "measure":
            _measure(base, step.row, measure_root / study_name(step.row.name), n_eval)
        else:
            tuner.trial(step.row, base, step.n)
            print(_line(step.row, f"{step.row.trials} trials"), flush=True)
        save()


def _line(r: Row, what: str) -> str:
    if r.status == SKIPPED:
        return f"{r.name}: skipped: {r.note}"
    acc = f", carve-out top-1 {r.top1:.4f} ± {r.se:.4f}" if r.top1 is not None else ""
    lr = f" (lr {r.lr:.3g})" if r.lr is not None else ""
    return f"{r.name}: {what}: {r.epoch_seconds:.2f} s/epoch, {r.learned:,} learned{acc}{lr}"


def _train(out: Path, row: Row) -> float:
    """Train the advised recipe on all of train; its validation top-1 goes next to the carve-out estimate."""
    summary = run(recipes.load(out / report.ADVISED), overwrite=True)
    line = (f"Trained as advised on all of train: validation top-1 **{summary['val_top1']:.4f}** (the carve-out "
            f"estimate: {row.top1:.4f} ± {row.se:.4f}); run folder {out / 'trained'}.")
    report.append(out, line)
    return summary["val_top1"]


def parse_budget(text: str) -> float:
    """--budget: a fraction in (0, 1) of the model's parameters, or a whole count >= 1."""
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--budget must be a fraction in (0, 1) or a parameter count, got {text!r}") from None
    if not math.isfinite(value) or value <= 0 or (value >= 1 and value != int(value)):
        raise UserError(f"--budget must be a fraction in (0, 1) or a whole parameter count, got {text!r}")
    return value if value < 1 else int(value)


def parse_time(text: str) -> float:
    """--time: a duration like 90s, 20m, 2h or 1h30m, in seconds."""
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", text.strip())
    if not text.strip() or parts is None or not any(parts.groups()):
        raise UserError(f"--time must be a duration like 90s, 20m, 2h or 1h30m, got {text!r}")
    seconds = sum(float(v) * u for v, u in zip(parts.groups(), (3600, 60, 1)) if v)
    if seconds <= 0:
        raise UserError(f"--time must be longer than 0, got {text!r}")
    return seconds
