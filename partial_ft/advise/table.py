"""The advice table: one row per candidate, and the recommendation rule over it.

The rule: among the candidates within the budget that finished tuning, the cheapest (fewest learned
parameters, then least time per epoch) whose carve-out accuracy is within two standard errors of the best
candidate's (full fine-tuning, outside the budget, included as the best when it is): best - acc <= 2 se(best),
se(p) = sqrt(p (1 - p) / n). Every candidate is scored on the same carve-out images, so their errors are
correlated and a difference is less noisy than two independent estimates, sqrt(se(best)^2 + se(acc)^2),
would say: that wider band let the linear probe stand for candidates 0.03 better on the transfer task
(docs/advise.md, "The exhaustive check").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

DONE, SKIPPED, CUT, PENDING = "done", "skipped", "cut", "pending"


@dataclass
class Row:
    """A candidate and what tuning found (top1 None until a trial finished)."""

    name: str  # e.g. "probe", "filters(fraction=0.0938)"
    spec: Optional[dict]  # the strategy node, sized (what advised.yaml gets; None: never sized)
    resolved: Any = None  # the same with choices made from data recorded (what its trials train)
    learned: int = 0
    total: int = 0
    in_budget: bool = True
    settings: dict[str, Any] = field(default_factory=dict)  # recipe values beyond the strategy, by dotted key
    status: str = PENDING
    note: str = ""  # why skipped, what was cut
    top1: Optional[float] = None  # best carve-out top-1 over its trials
    n_eval: int = 0  # carve-out images
    lr: Optional[float] = None  # the chosen learning rate (None: none tuned, as for the exact probe)
    epoch_seconds: Optional[float] = None  # training seconds of one epoch (measured)
    setup_seconds: float = 0.0  # a run's seconds around its epochs (data, model, plan, feature cache)
    trial_epochs: int = 1  # epochs a trial trains (the recipe's, or what its max_steps comes to)
    peak_memory_bytes: Optional[int] = None
    delta_bytes: Optional[int] = None
    trials: int = 0
    pruned: int = 0
    tunes_lr: bool = True  # False for the exact probe: nothing to tune
    candidate: str = ""  # which of advise's candidates (candidates.CANDIDATES) it is

    @property
    def se(self) -> float:
        """The binomial standard error of top1 on n_eval images."""
        return binomial_se(self.top1, self.n_eval) if self.top1 is not None else float("nan")

    @property
    def fraction(self) -> float:
        return self.learned / self.total if self.total else 0.0


def apply_settings(raw: dict, settings: dict[str, Any]) -> dict:
    """`raw` (a recipe as plain data, changed in place) with each dotted `section.key` set to its value."""
    for key, value in settings.items():
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = value
    return raw


def binomial_se(p: float, n: int) -> float:
    """sqrt(p (1 - p) / n): the standard error of an accuracy p measured on n images."""
    return math.sqrt(p * (1 - p) / n) if n > 0 else float("nan")


def within_noise(row: Row, best: Row) -> bool:
    """Whether `row`'s accuracy is within two of `best`'s standard errors of it."""
    return best.top1 - row.top1 <= 2 * best.se + 1e-12


def cost(row: Row) -> tuple[float, float]:
    """What 'cheaper' means: fewer learned parameters, then less time per epoch."""
    return row.learned, row.epoch_seconds if row.epoch_seconds is not None else math.inf


@dataclass
class Recommendation:
    """The chosen row, the most accurate row, and whether the choice is within noise of it."""

    choice: Row
    best: Row
    within: bool  # False: nothing within the budget comes within noise of the best (full fine-tuning)


def recommend(rows: list[Row]) -> Optional[Recommendation]:
    """The recommendation rule (see the module docstring); None when no row within the budget finished.
    Ties in cost go to the more accurate row, then the earlier one."""
    done = [r for r in rows if r.status in (DONE, CUT) and r.top1 is not None]
    eligible = [r for r in done if r.in_budget]
    if not eligible:
        return None
    best = max(done, key=lambda r: r.top1)  # max keeps the first of equals
    close = [r for r in eligible if within_noise(r, best)]
    if close:
        return Recommendation(min(close, key=lambda r: (*cost(r), -r.top1)), best, True)
    return Recommendation(max(eligible, key=lambda r: r.top1), best, False)


def count(n: int) -> str:
    """A parameter count in words: 970, 37.2 K, 11.2 M."""
    return f"{n / 1e6:.3g} M" if n >= 1e6 else f"{n / 1e3:.3g} K" if n >= 1e4 else f"{n:,}"


def _acc(row: Row) -> str:
    return f"{row.top1:.3f} ± {row.se:.3f}"


def _cost_words(row: Row) -> str:
    lr = f" at lr {row.lr:.3g}" if row.lr is not None else ""
    time = f", {row.epoch_seconds:.3g} s/epoch" if row.epoch_seconds is not None else ""
    return f"with {count(row.learned)} parameters ({100 * row.fraction:.3g}%){time}{lr}"


def sentence(rec: Optional[Recommendation], probe: Optional[Row] = None) -> str:
    """The recommendation in one sentence with its numbers."""
    if rec is None:
        return "No candidate within the budget finished a trial: there is nothing to recommend yet."
    c, b = rec.choice, rec.best
    head = f"`{c.name}` reaches {_acc(c)} on the carve-out {_cost_words(c)}"
    if c is probe:
        how = "the most accurate candidate" if c is b else "already within noise of the best"
        head = (f"The linear probe is {how}, so nothing needs to be fine-tuned: it reaches {_acc(c)} on the "
                f"carve-out {_cost_words(c)}")
    if c is b:
        return f"{head}." if c is probe else f"{head}; it is also the most accurate candidate."
    if not rec.within:
        return (f"No candidate within the budget comes within two standard errors of `{b.name}` "
                f"({_acc(b)} with {count(b.learned)}); the best within the budget: {head[0].lower()}{head[1:]}.")
    return f"{head}; the best, `{b.name}`, reaches {_acc(b)} with {count(b.learned)} (+{b.top1 - c.top1:.3f})."
