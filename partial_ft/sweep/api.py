"""The sweep's public functions: run a sweep (alone or as one of many workers), its tables and progress
from the study, and `tune`: one configuration's tuning study on its own (what `advise` builds on)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import UserError
from ..runlock import hold_folder
from . import grid as grids, records, results, study
from .engine import Engine, Options
from .jobs import LAUNCHERS
from .plan import Plan, load

LOCK = ".sweep.lock"


@dataclass
class Finished:
    """What a sweep process leaves: the tables it wrote (None: no final run finished) and the failures."""

    tables: Optional[Path]
    failures: list[tuple[str, str]] = field(default_factory=list)


def _check(options: Options, storage: Optional[str]) -> None:
    if options.jobs < 1:
        raise UserError("--jobs must be >= 1")
    if options.jobs > 1 and options.launcher == "inprocess":
        raise UserError("--jobs > 1 needs separate processes (--launcher python or accelerate)")
    if options.launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {options.launcher!r}; one of {list(LAUNCHERS)}")
    if not options.heartbeat > 0:
        raise UserError(f"--heartbeat must be > 0 seconds, got {options.heartbeat}")
    if options.worker and storage is None:
        raise UserError("--worker needs --storage URL: the study the workers share (a database, or journal:PATH "
                        "on a shared file system)")


def _hold(out: Path, worker: bool):
    """One sweep per folder: a plain sweep holds the folder alone; workers of one study share it."""
    out.mkdir(parents=True, exist_ok=True)
    return hold_folder(out / LOCK, worker, f"another sweep is running in {out}; wait for it, or join it as a "
                                           "worker of its study (--storage URL --worker)")


def run_sweep(recipe: str | Path, grid: str | Path | grids.Grid, out: str | Path, overrides: list[str] = (),
              storage: Optional[str] = None, name: str = "sweep", options: Options = Options(),
              finals: bool = True) -> Finished:
    """Run the sweep: set up its study (or join it, `options.worker`), train runs until none is left, write
    results.csv / results.md into `out`. Any user mistake raises UserError before anything is written."""
    _check(options, storage)
    plan = load(recipe, grid, out, list(overrides), finals)
    where = storage or str(plan.out / study.JOURNAL)
    if storage is not None:  # a bad URL, or a study of another grid, fails before the folder is made
        store = study.open_storage(storage, plan.out)
        study.check_same(store, name, plan.digest(), where)
    with _hold(plan.out, options.worker):
        if storage is None:
            store = study.open_storage(None, plan.out)
        engine = Engine(plan, store, name, where)
        engine.set_up(replace_other=storage is None)
        if not options.worker:
            engine.restart(exclusive=storage is None, beat=options.heartbeat)
        engine.work(options)
        return Finished(write_report(plan, store, name) if finals else None,
                        records.failures(store, name, len(plan.configs)))


def write_report(plan: Plan, storage: Any, name: str) -> Optional[Path]:
    """results.csv and results.md from the study's finished final runs; None when there are none yet."""
    rows = records.final_rows(storage, name)
    if not rows:
        return None
    cost = {i: records.tuning(storage, name, i).cost() for i in {r["index"] for r in rows}} if plan.tuned else {}
    runs = [{**r, **cost.get(r["index"], {}), "config": plan.configs[r["index"]]} for r in rows]
    table = results.aggregate(runs, plan.tuned)
    plan.out.mkdir(parents=True, exist_ok=True)
    results.write_tables(table, plan.out, plan.tuned)
    return plan.out / "results.md"


def _open(recipe: str | Path, grid: str | Path, out: str | Path, overrides: list[str], storage: Optional[str],
          name: str) -> tuple[Plan, Any]:
    plan = load(recipe, grid, out, list(overrides))
    if storage is None and not (plan.out / study.JOURNAL).is_file():
        raise UserError(f"no sweep study in {plan.out} (its {study.JOURNAL}); pass --storage URL where it lives")
    store = study.open_storage(storage, plan.out)
    if study.study_id(store, name) is None:
        raise UserError(f"no study {name!r} in {storage or plan.out / study.JOURNAL}")
    study.wait_ready(store, name, plan.digest(), storage or str(plan.out / study.JOURNAL))
    return plan, store


def report(recipe: str | Path, grid: str | Path, out: str | Path, overrides: list[str] = (),
           storage: Optional[str] = None, name: str = "sweep") -> Optional[Path]:
    """Write the tables of a sweep from its study now (finished runs so far)."""
    plan, store = _open(recipe, grid, out, overrides, storage, name)
    return write_report(plan, store, name)


def status(recipe: str | Path, grid: str | Path, out: str | Path, overrides: list[str] = (),
           storage: Optional[str] = None, name: str = "sweep") -> dict[str, records.Counts]:
    """Runs done / running / left, per kind ('tune', 'final') and in all ('all'), across every worker."""
    plan, store = _open(recipe, grid, out, overrides, storage, name)
    engine = Engine(plan, store, name, "")
    return records.counts(store, name, len(plan.configs), bool(plan.grid.tune), engine.total)
