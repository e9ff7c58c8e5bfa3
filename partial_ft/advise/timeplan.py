"""The time plan: what to run next so that the answer is as good as the time allows, and nothing runs past
the limit by more than one epoch.

Every candidate's first epoch is measured (one epoch on the carve-out, cheapest first); from then on a
step starts only when its cost, estimated from that measured epoch, fits in the time left. The order:

1. measure every candidate within the budget (a measurement is one epoch: it may overrun by that much);
2. give each measured candidate its first `FIRST` trials (learning rates across the range);
3. full fine-tuning, the reference, is measured and tried only if the time left pays for it;
4. the rest of the time goes to the candidates near the top, those whose accuracy is within two standard
   errors of the best (they can change the answer), cheapest first, one trial each per round, up to
   `trials` each.

What could not run is named: a candidate never measured, or tuned with fewer trials than planned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .table import DONE, PENDING, SKIPPED, Row, within_noise

FIRST = 2  # trials every candidate gets before the time goes to those near the top


@dataclass
class Step:
    """What to do next: 'measure' a row's first epoch, or one more 'trial' of its tuning."""

    kind: str
    row: Row


def trial_seconds(row: Row) -> float:
    """A trial's estimated cost from the measured epoch: its set-up and its epochs."""
    return row.setup_seconds + row.epoch_seconds * row.trial_epochs


def _fits(row: Row, left: float) -> bool:
    return row.epoch_seconds is not None and trial_seconds(row) <= left


def next_step(rows: list[Row], left: float, trials: int) -> Optional[Step]:
    """The next step within `left` seconds, or None when nothing more fits (or everything is done)."""
    live = [r for r in rows if r.status != SKIPPED]
    inside = sorted((r for r in live if r.in_budget), key=lambda r: r.learned)
    refs = [r for r in live if not r.in_budget]
    if left <= 0:
        return None
    for r in inside:
        if r.epoch_seconds is None:
            return Step("measure", r)
    wanted = {id(r): 1 if not r.tunes_lr else trials for r in live}
    for r in inside:
        if r.trials < min(FIRST, wanted[id(r)]) and _fits(r, left):
            return Step("trial", r)
    for r in refs:  # the reference: only when the time left pays for its first trials at the slowest known rate
        slowest = max((trial_seconds(x) for x in inside if x.epoch_seconds and x.tunes_lr), default=0.0)
        if r.epoch_seconds is None and left >= FIRST * slowest:
            return Step("measure", r)
        if r.trials < FIRST and _fits(r, left):
            return Step("trial", r)
    tried = [r for r in live if r.top1 is not None]
    if not tried:
        return None
    best = max(tried, key=lambda r: r.top1)
    near = sorted((r for r in tried if within_noise(r, best)), key=lambda r: (r.trials, r.learned))
    for r in near:
        if r.trials < wanted[id(r)] and _fits(r, left):
            return Step("trial", r)
    return None


def cuts(rows: list[Row], trials: int) -> list[str]:
    """What was not run, and why (the time limit, or the plan: far below the best), one line per candidate."""
    tried = [r for r in rows if r.top1 is not None]
    best = max(tried, key=lambda r: r.top1) if tried else None
    out = []
    for r in rows:
        wanted = trials if r.tunes_lr else 1
        if r.status == SKIPPED or r.trials >= wanted:
            continue
        if r.epoch_seconds is None:
            out.append(f"`{r.name}`: not run: the time ran out before its first epoch could be measured")
        elif r.trials == 0:
            out.append(f"`{r.name}`: not tuned: a trial ({r.epoch_seconds:.3g} s/epoch) did not fit the time left")
        elif best is not None and not within_noise(r, best):
            out.append(f"`{r.name}`: {r.trials} of {wanted} trials: more than two standard errors below the best, "
                       "so the time went to the candidates near the top")
        else:
            out.append(f"`{r.name}`: {r.trials} of {wanted} trials (cut for time)")
    return out


def settle(rows: list[Row], trials: int) -> None:
    """Mark each row's status after planning stopped: done, or cut (some trials), or left pending."""
    for r in rows:
        if r.status == SKIPPED:
            continue
        wanted = trials if r.tunes_lr else 1
        r.status = DONE if r.trials >= wanted else ("cut" if r.top1 is not None else PENDING)
