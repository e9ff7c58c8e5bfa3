"""Sizing a strategy to a parameter budget: set its size option so that it learns about (or at most) a
given number of parameters, counted on the real plan.

Strategies that register a `size_option` are sized by bisection on the learned count of the plan they
build: a float option in (0, 1] (e.g. `filters`' fraction) or an integer option >= 1 (e.g. `lora`'s rank);
the learned count never decreases as the option grows. Strategies with a `budget_option` (e.g. `auto`'s
budget) take the budget as a count and meet it themselves, from data. The others (full, head, norm, bias,
block) have a fixed size: they are counted as they are.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Callable
from typing import Any, Optional, Union

from torch import nn

from .errors import UserError
from .strategies import apply_strategy
from .strategies.registry import get, parse_options

INT_CEILING = 1 << 16  # an integer size option is searched in 1 .. this (lora ranks beyond it make no sense)


def budget_count(budget: Union[int, float], total: int) -> int:
    """A budget in parameters: a fraction (0, 1) of `total` (rounded down), or a count as given."""
    return int(budget * total) if budget < 1 else int(budget)


def learned_count(model: nn.Module, spec: dict, seed: int = 0,
                  init_model: Optional[Callable[[], nn.Module]] = None) -> tuple[int, int]:
    """(learned, total) parameters of the plan `spec` builds on a copy of `model` (the model is untouched)."""
    plan = apply_strategy(copy.deepcopy(model), spec, seed=seed, init_model=init_model)
    return plan.learned, plan.total


def _is_int_option(spec: dict, option: str) -> bool:
    options = type(parse_options(spec))
    hint = typing.get_type_hints(options)[option]
    return hint is int or int in typing.get_args(hint) and float not in typing.get_args(hint)


def size_to_budget(model: nn.Module, spec: dict, budget: Union[int, float], seed: int = 0,
                   init_model: Optional[Callable[[], nn.Module]] = None, at_most: bool = False,
                   steps: int = 30) -> tuple[dict, int]:
    """`spec` with its size option set so that its plan learns closest to `budget` (a fraction < 1 of
    the model's parameters, or a count), or, with `at_most`, the most it can without exceeding it.
    Returns (spec, learned); for a strategy with a budget option, learned is the budget (it chooses
    from data at training time, within it)."""
    strategy = get(spec["name"])
    total = sum(p.numel() for p in model.parameters())
    goal = budget_count(budget, total)
    if strategy.budget_option:
        return {**spec, strategy.budget_option: goal}, goal
    option = strategy.size_option
    if option is None:
        return dict(spec), learned_count(model, spec, seed, init_model)[0]
    spec = {k: v for k, v in spec.items() if k not in _exclusive(spec, option)}

    def count(value: Any) -> int:
        return learned_count(model, {**spec, option: value}, seed, init_model)[0]

    search = _integer_search if _is_int_option(spec, option) else _fraction_search
    value, learned = search(count, goal, at_most, steps)
    return {**spec, option: value}, learned


def _exclusive(spec: dict, option: str) -> set[str]:
    """Options that would contradict a size set by `option` (filters' count beside its fraction)."""
    defaults = {f.name for f in dataclasses.fields(type(parse_options(spec)))}
    return {"count"} & defaults - {option}


def _fraction_search(count: Callable[[Any], int], goal: int, at_most: bool, steps: int) -> tuple[float, int]:
    """Bisection over (0, 1] (geometric while the bracket is wide): the closest count, or the largest <= goal."""
    lo, hi = 1e-6, 1.0
    best: Optional[tuple[float, float, int]] = None
    for _ in range(steps):
        mid = (lo * hi) ** 0.5 if hi / lo > 4 else (lo + hi) / 2
        learned = count(round(mid, 6))
        if (learned <= goal or not at_most) and (best is None or abs(learned - goal) < best[0]):
            best = (abs(learned - goal), round(mid, 6), learned)
        lo, hi = (mid, hi) if learned < goal else (lo, mid)
    if best is None:  # even the smallest size exceeds it: report the smallest
        return 1e-6, count(1e-6)
    return best[1], best[2]


def _integer_search(count: Callable[[Any], int], goal: int, at_most: bool, steps: int) -> tuple[int, int]:
    """The integer >= 1 whose count is closest to goal (or the largest with count <= goal): doubling to
    bracket it, then bisection. A value the strategy refuses (UserError: e.g. a lora rank above a layer's
    full rank) counts as too large; the smallest, 1, must be accepted (its error is the caller's)."""

    def safe(value: int) -> Optional[int]:  # None: refused, so above any size that is allowed
        try:
            return count(value)
        except UserError:
            return None

    lo, lo_count = 1, count(1)
    if lo_count >= goal:
        return 1, lo_count
    hi, hi_count = 2, safe(2)
    while hi < INT_CEILING and hi_count is not None and hi_count < goal:
        lo, lo_count, hi = hi, hi_count, min(hi * 2, INT_CEILING)
        hi_count = safe(hi)
    while hi - lo > 1:  # invariant: count(lo) < goal, and count(hi) >= goal or hi is refused
        mid = (lo + hi) // 2
        c = safe(mid)
        lo, lo_count, hi, hi_count = (mid, c, hi, hi_count) if c is not None and c < goal else (lo, lo_count, mid, c)
    if hi_count is None:  # the goal is beyond what the strategy allows: its largest allowed
        return lo, lo_count
    if hi_count < goal:  # even the ceiling learns less
        return hi, hi_count
    if at_most and hi_count > goal or (not at_most and goal - lo_count <= hi_count - goal):
        return lo, lo_count
    return hi, hi_count
