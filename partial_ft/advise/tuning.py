"""Tuning one candidate, one trial at a time, on the sweep engine: a study per candidate (learning rate on a
log range, QMC, successive-halving pruning) in the advise folder's study storage (or --storage), so that
finished trials are kept and any number of --worker processes can share them.

The time plan decides how many trials each candidate gets: each call asks for `n` more. A candidate's
trials live in ONE study (`advise-<candidate>`) that each call extends to the trials it asks for in all
(a tuning study's fingerprint leaves the count out): its finished trials stay finished and are never
trained again, the pruner judges a new trial against every earlier one, and the QMC sampler's Sobol
sequence goes on where it stopped, so that a few trials already span the range (six TPE-startup draws, the
same for every candidate, clustered at 0.003-0.009 on the transfer task and never tried `norm`'s best
learning rate, 0.1).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import yaml

from ..atomic import write_text
from ..sweep import Options, tune
from .table import Row

LR_RANGE = {"low": 1e-4, "high": 0.3, "log": True}  # train.lr, searched on a log scale
BASE = "base_recipe.yaml"  # the recipe every trial starts from (the user's, resolved, with their overrides)


class Tuner:
    """Runs trials of candidates in the advise folder's study storage."""

    def __init__(self, storage: Any, worker: bool, launcher: str, out: Path, n_eval: int, tune_fraction: float,
                 seed: int, deadline: Optional[float] = None):
        self.storage, self.worker, self.launcher = storage, worker, launcher
        self.out, self.n_eval, self.tune_fraction, self.seed = out, n_eval, tune_fraction, seed
        self.deadline = deadline  # time.time() when --time is up: no trial starts after it, a running one stops

    def trial(self, row: Row, base: dict, n: int = 1) -> None:
        """`n` more trials of `row`; the row gets the best so far (chosen lr, top-1, counts)."""
        path = write_base(self.out, base)
        overrides = [f"{k}={json.dumps(v)}" for k, v in row.settings.items()]
        total = row.trials + n
        search = {"trials": total, "sampler": "qmc", "pruner": "halving",
                  "min_epochs": judged_from(row.trial_epochs, base["train"].get("warmup_epochs") or 0)}
        tuned = tune(path, row.resolved, {"train.lr": dict(LR_RANGE)}, self.out, overrides, search,
                     self.tune_fraction, self.seed, self.storage, f"advise-{study_name(row.name)}",
                     Options(launcher=self.launcher, worker=self.worker, deadline=self.deadline))
        row.trials = len(tuned.trials)
        row.pruned = sum(t.state == "pruned" for t in tuned.trials)
        if tuned.chosen is not None:
            row.top1, row.lr, row.n_eval = tuned.top1, float(tuned.chosen["train.lr"]), self.n_eval


def judged_from(epochs: int, warmup_epochs: int) -> int:
    """The epoch a trial is first judged at by the pruner: in the second half of its schedule, and after
    the warm-up. A large learning rate's accuracy lags until the schedule has brought it down: replaying the
    exhaustive checks' curves (tools/pruning_replay.py, docs/advise.md), judging 4-epoch trials after epoch 1
    chose learning rates 0.051 worse on the carve-out on average, after epoch 3 0.020; 6-epoch trials after
    epoch 2 0.004, after epoch 4 0.0025."""
    return max(warmup_epochs + 1, epochs // 2 + 1)


def write_base(out: Path, base: dict) -> Path:
    """`out`/base_recipe.yaml: the recipe as advise resolved it (the user's, with their overrides), without
    a strategy and without the carve-out (the sweep engine adds each), what tuning and the check sweep start from."""
    raw = {k: v for k, v in base.items() if k != "strategy"}
    raw["data"] = {k: v for k, v in raw["data"].items() if k not in ("tune_fraction", "tune_seed")}
    return write_text(out / BASE, yaml.safe_dump(raw, sort_keys=False))


def study_name(label: str) -> str:
    """A candidate's label as a study name."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label).strip("_")
