"""The time plan: what to run next so that the answer is as good as the time allows, and nothing runs past
the limit by more than one epoch.

Every candidate's first epoch is measured (one epoch on the carve-out, cheapest first); from then on a
step starts only when its cost, estimated from that measured epoch, fits in the time left. The order:

1. measure every candidate within the budget (a measurement is one epoch: it may overrun by that much);
2. give each measured candidate its first `FIRST` trials (learning rates across the range), in one call of
   the sweep engine, so that its pruner can stop the worse one early;
3. full fine-tuning, the reference, is measured and tried only if the time left pays for it;
4. the rest of the time goes to the candidates near the top, those whose accuracy is within two standard
   errors of the best (they can change the answer), the least tried first, `ROUND` trials each per round,
   up to `trials` each;
5. time still left goes to the candidates further below, cheapest first, in the same rounds: their untried
   learning rates may bring a cheaper one into the band, and the cheapest in the band is the answer (on
   the transfer task, stopping after step 4 left two thirds of the time unused and `norm` at two trials).

What could not run is named: a candidate never measured, or tuned with fewer trials than planned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .table import DONE, PENDING, SKIPPED, Row, cost, within_noise

FIRST = 2  # trials every candidate gets before the time goes to those near the top
ROUND = 2  # more trials per candidate near the top, per round


@dataclass
class Step:
    """What to do next: 'measure' a row's first epoch, or `n` more 'trial's of its tuning (one call of the
    sweep engine: its pruner compares the trials of one call)."""

    kind: str
    row: Row
    n: int = 0


def trial_seconds(row: Row) -> float:
    """A trial's estimated cost from the measured epoch: its set-up and its epochs."""
    return row.setup_seconds + row.epoch_seconds * row.trial_epochs


def _fits(row: Row, left: float) -> bool:
    return row.epoch_seconds is not None and trial_seconds(row) <= left


def _trials(row: Row, upto: int, left: float) -> Optional[Step]:
    """As many more trials as wanted (up to `upto` in all) and as fit in `left`; None if not one does."""
    n = min(upto - row.trials, int(left // max(trial_seconds(row), 1e-9))) if _fits(row, left) else 0
    return Step("trial", row, n) if n >= 1 else None


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
        step = _trials(r, min(FIRST, wanted[id(r)]), left)
        if step is not None:
            return step
    for r in refs:  # the reference: only when the time left pays for its first trials at the slowest known rate
        slowest = max((trial_seconds(x) for x in inside if x.epoch_seconds and x.tunes_lr), default=0.0)
        if r.epoch_seconds is None and left >= FIRST * slowest:
            return Step("measure", r)
        step = _trials(r, FIRST, left)
        if step is not None:
            return step
    tried = [r for r in live if r.top1 is not None]
    if not tried:
        return None
    best = max(tried, key=lambda r: r.top1)
    near = sorted((r for r in tried if within_noise(r, best)), key=lambda r: (r.trials, r.learned))
    far = sorted((r for r in tried if not within_noise(r, best)), key=cost)
    # a round: up to ROUND more each, near the top first (least tried first), then the rest, cheapest first:
    # with untried learning rates a cheaper one may still reach the top (and be the answer)
    for r in [*near, *far]:
        step = _trials(r, min(wanted[id(r)], r.trials + ROUND), left)
        if step is not None:
            return step
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
