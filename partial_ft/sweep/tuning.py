"""`tune`: one configuration's tuning study on its own — a strategy on a base recipe, candidates or ranges
searched on a carve-out of train, losing candidates pruned — with a record per trial."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from optuna.trial import TrialState

from . import grid as grids, records, study
from .api import run_sweep
from .engine import Options


@dataclass
class TrialRecord:
    """One tuning run: its values, how it ended ('complete', 'pruned', 'failed'), the epochs it trained,
    its last carve-out top-1, its training seconds and its run folder."""

    number: int
    params: dict[str, Any]
    state: str
    epochs: int
    top1: Optional[float]
    seconds: float
    run_dir: str


@dataclass
class Tuned:
    """A tuning study's outcome: every trial, and the chosen values with their carve-out top-1 (None when
    every candidate failed)."""

    trials: list[TrialRecord]
    chosen: Optional[dict[str, Any]]
    top1: Optional[float]


STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


def tune(recipe: str | Path, strategy: dict, space: dict[str, Any], out: str | Path, overrides: list[str] = (),
         search: Optional[dict] = None, tune_fraction: float = 0.2, seed: int = 0, storage: Optional[str] = None,
         name: str = "tune", options: Options = Options(launcher="inprocess")) -> Tuned:
    """Tune `strategy` on the base `recipe` (+ `overrides`): `space` maps recipe keys to candidate lists or
    ranges, e.g. {"train.lr": {"low": 1e-4, "high": 0.3, "log": True}}; `search` is a grid file's search
    section, e.g. {"trials": 8, "sampler": "tpe", "pruner": "halving", "min_epochs": 1}. Each trial trains
    with `seed` on train minus a stratified `tune_fraction` carve-out, validated on the carve-out (the
    validation split is never used), reporting top-1 after each epoch so the pruner stops losing ones.
    Runs go under `out`/tune/; the study lives in `storage` (default: a journal file in `out`), so several
    processes can share it (`options.worker`). Bad input raises UserError before anything is written."""
    grid = grids.from_dict({"seeds": [seed], "strategies": [strategy], "tune": space, "search": search or {},
                            "tune_fraction": tune_fraction})
    run_sweep(recipe, grid, out, list(overrides), storage, name, options, finals=False)
    store = study.open_storage(storage, Path(out))
    result = records.tuning(store, name, 0)
    chosen = result.choice()
    trials = [TrialRecord(t.number, t.user_attrs.get("candidate", t.params), STATES[t.state],
                          t.user_attrs.get("epochs", 0), t.user_attrs.get("top1"), t.user_attrs.get("seconds", 0.0),
                          t.user_attrs.get("run_dir", ""))
              for t in sorted(result.trials, key=lambda t: t.number) if t.state in STATES]
    return Tuned(trials, *(chosen if chosen else (None, None)))
