"""Sweeps: a grid of strategies x options x seeds (x datasets x models) over one base recipe, each
configuration tuned by an Optuna study on a carve-out of train (losing candidates pruned), the runs shared
by any number of worker processes through one study storage; results tables and plots' input.

    python -m partial_ft sweep --recipe R --grid G --out DIR [section.key=value ...]

Public API:
    run_sweep(recipe, grid, out, overrides, storage, name, options)   run (or join) a sweep; tables
    report(recipe, grid, out, ...) / status(...)                      tables / counts from the study
    tune(recipe, strategy, space, out, ...)                            one configuration's tuning study
    Options(launcher, jobs, heartbeat, worker)                         how this process runs its share
    budget.match / budget.match_all / budget.controls                  equal-budget sizing
    results.COST / results.mean_rows / results.markdown                what tools/plot.py reads results.csv with
Grid files: see partial_ft/sweep/grid.py and search.py; docs/sweep.md.
"""
from __future__ import annotations

import importlib
from typing import Any

# where each public name lives; loaded on first use, so that `python -m partial_ft` (which builds the
# sweep's argument parser from .cli) does not import Optuna and the training stack for every command
_PUBLIC = {"Finished": "api", "report": "api", "run_sweep": "api", "status": "api", "Options": "engine",
           "TrialRecord": "tuning", "Tuned": "tuning", "tune": "tuning", "budget": "budget", "results": "results"}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{_PUBLIC[name]}", __name__)
    return module if name == _PUBLIC[name] else getattr(module, name)
