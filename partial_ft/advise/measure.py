"""Measuring a candidate: one epoch of it on the carve-out, in this process, timed, with its peak memory.

The run's summary has the training seconds, the delta's size and the learned count. Its peak memory is
the process's, and advise runs every candidate in one process: so the peak is reset before each run and
read after it (on a GPU torch's allocator peak; on Linux the resident set's high-water mark, VmHWM, which
writing 5 to /proc/self/clear_refs resets; elsewhere it is not measured).
"""
from __future__ import annotations

import contextlib
import copy
import re
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ..recipe import from_dict
from ..train import run
from .table import Row, apply_settings

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak() -> None:
    """Start a new peak-memory measurement."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        CLEAR_REFS.write_text("5")
    except OSError:  # not Linux, or not allowed: the CPU peak is then not measured
        pass


def read_peak() -> Optional[int]:
    """The peak memory since reset_peak(): GPU bytes allocated, else resident bytes (None: unknown)."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    try:
        found = re.search(r"VmHWM:\s+(\d+)\s+kB", STATUS.read_text())
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


def candidate_raw(base: dict, row: Row, run_dir: Path, epochs: Optional[int] = None) -> dict:
    """A run of `row` on the carve-out (`base` holds data.tune_fraction): its recipe as plain data."""
    raw = apply_settings(copy.deepcopy(base), row.settings)
    raw["strategy"] = copy.deepcopy(row.resolved)
    raw["train"]["progress"] = False
    if epochs is not None:
        raw["train"]["epochs"] = epochs
    raw["output"]["dir"] = str(run_dir)
    return raw


def measure(base: dict, row: Row, run_dir: Path, n_eval: int) -> dict[str, Any]:
    """Train `row` for one epoch into `run_dir` (replaced if there; what it prints goes to run_dir.log);
    fill in its seconds per epoch, the set-up seconds around them, peak memory and delta bytes (and, for a
    row with nothing to tune, its result). Returns the summary."""
    recipe = from_dict(candidate_raw(base, row, run_dir, epochs=1), name=row.name)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    reset_peak()
    start = time.perf_counter()
    with open(run_dir.with_suffix(".log"), "w") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):  # the run's own lines and warnings
        summary = run(recipe, overwrite=True)
    wall = time.perf_counter() - start
    row.epoch_seconds = max(summary["train_seconds"], 1e-3)
    row.setup_seconds = max(wall - row.epoch_seconds, 0.0)
    epochs, max_steps = base["train"]["epochs"], base["train"]["max_steps"]  # what a trial trains
    if not row.tunes_lr:  # the exact probe: one solve, no epochs
        row.trial_epochs = 1
    else:
        row.trial_epochs = epochs if not max_steps else max(1, -(-max_steps // max(summary["steps"], 1)))
    row.peak_memory_bytes = read_peak()
    row.delta_bytes = summary.get("delta_bytes")
    row.learned = summary["learned_params"]
    if not row.tunes_lr:  # the exact probe: its one run is its result
        row.top1, row.n_eval, row.trials = summary["val_top1"], n_eval, 1
    return summary
