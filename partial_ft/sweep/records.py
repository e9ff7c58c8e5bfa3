"""What the study says about a sweep: each configuration's choice, the counts of runs done / running /
left, and the rows of the results tables, read from the trials (so any worker, and `sweep --report`,
writes the same tables)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from .study import FINISHED, final_name, study_id, superseded, tune_name


def live(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that stand for a run: not those another trial took over."""
    gone = superseded(trials)
    return [t for t in trials if t.number not in gone]


def trials_of(storage: BaseStorage, name: str) -> list[FrozenTrial]:
    sid = study_id(storage, name)
    return [] if sid is None else live(storage.get_all_trials(sid, deepcopy=False))


@dataclass
class Tuning:
    """A configuration's tuning as the study has it."""

    trials: list[FrozenTrial]

    @property
    def done(self) -> bool:
        return all(t.state in FINISHED for t in self.trials)

    def choice(self) -> Optional[tuple[dict[str, Any], float]]:
        """The best finished candidate (pruned ones never), the first in order on a tie, and its top-1."""
        complete = sorted((t for t in self.trials if t.state == TrialState.COMPLETE),
                          key=lambda t: t.user_attrs.get("order", t.number))
        if not complete:
            return None
        best = max(complete, key=lambda t: t.value)  # max keeps the first of equals
        return best.user_attrs["candidate"], best.value

    def cost(self) -> dict[str, Any]:
        """tune_trials, tune_pruned, tune_seconds, tune_steps: every tuning run that trained, pruned ones included."""
        ran = [t for t in self.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        return {"tune_trials": len(ran), "tune_pruned": sum(t.state == TrialState.PRUNED for t in ran),
                "tune_seconds": round(sum(t.user_attrs.get("seconds", 0.0) for t in ran), 3),
                "tune_steps": sum(t.user_attrs.get("steps", 0) for t in ran)}


def tuning(storage: BaseStorage, name: str, index: int) -> Tuning:
    return Tuning(trials_of(storage, tune_name(name, index)))


@dataclass
class Counts:
    """Runs of the whole sweep (all workers): finished (pruned and failed among them), running, left."""

    total: int
    done: int = 0
    running: int = 0
    pruned: int = 0
    failed: int = 0

    @property
    def left(self) -> int:
        return self.total - self.done - self.running

    def line(self) -> str:
        return f"[{self.done}/{self.total} done, {self.running} running, {self.left} left]"


def counts(storage: BaseStorage, name: str, configs: int, tuned: bool, total: int) -> dict[str, Counts]:
    """Per kind ('tune', 'final') and in all ('all'): how many runs are done, running, left."""
    kinds = {"tune": [t for i in range(configs) for t in trials_of(storage, tune_name(name, i))] if tuned else [],
             "final": trials_of(storage, final_name(name))}
    out = {}
    for kind, trials in kinds.items():
        c = Counts(total=0)
        for t in trials:
            c.total += 1
            c.done += t.state in FINISHED
            c.running += t.state == TrialState.RUNNING
            c.pruned += t.state == TrialState.PRUNED
            c.failed += t.state == TrialState.FAIL
        out[kind] = c
    whole = Counts(total, *(sum(getattr(c, k) for c in out.values()) for k in ("done", "running", "pruned", "failed")))
    return {**out, "all": whole}


def failures(storage: BaseStorage, name: str, configs: int) -> list[tuple[str, str]]:
    """(what, why) of every run that failed."""
    trials = [t for i in range(configs) for t in trials_of(storage, tune_name(name, i))]
    trials += trials_of(storage, final_name(name))
    return [(t.user_attrs.get("where", f"trial {t.number}"), t.user_attrs.get("error", "stopped"))
            for t in trials if t.state == TrialState.FAIL]


def final_rows(storage: BaseStorage, name: str) -> list[dict[str, Any]]:
    """Each finished final run: its summary (the part the tables need), configuration index, chosen values."""
    rows, seen = [], set()
    for t in sorted(trials_of(storage, final_name(name)), key=lambda t: t.user_attrs["order"]):
        key = (t.user_attrs["config"], t.user_attrs["seed"])
        if t.state == TrialState.COMPLETE and key not in seen:
            seen.add(key)
            rows.append({**t.user_attrs["summary"], "index": t.user_attrs["config"],
                         "chosen": t.user_attrs.get("chosen") or {}, "tune_top1": t.user_attrs.get("tune_top1"),
                         "dataset": t.user_attrs.get("dataset", "")})
    return rows
