"""`advise`: which strategy for my data, my parameter budget and my time — candidates sized to the budget,
each tuned on a carve-out of train by the sweep engine within a time plan, a report with the
recommendation and a runnable recipe (docs/advise.md).

    python -m partial_ft advise --recipe R [--budget B] [--time T] [--out DIR] [--train] [section.key=value ...]

Modules: candidates (sizing, the input checks), measure (one timed epoch), timeplan (what runs next),
tuning (a candidate's study on the sweep engine), table (rows, the recommendation rule), report
(advice.md, the plot, advised.yaml), state (continuing), check (the exhaustive check), run (the driver).

Public API (what tools/advise_check.py uses):
    write_check_grid(folder, path=None)     an advise folder's check sweep grid (check.yaml)
    sweep_command(folder, grid)             the command that runs that sweep
    check_advice(folder, results=None)      the recommendation against the check sweep: check.md, its Verdict
"""
from __future__ import annotations

import importlib
from typing import Any

# loaded on first use, as partial_ft.sweep's: the CLI builds advise's parser from .cli without the training stack
_PUBLIC = {"write_check_grid": "check", "check_advice": "check", "Verdict": "check", "sweep_command": "check"}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
