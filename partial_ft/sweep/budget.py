"""Budget matching: choose each strategy's size so that all learn about the same number of parameters
(a grid's `budget:`), and the equal-count random controls beside them (a grid's `controls:`).

A budget below 1 is a fraction of the model's parameters, otherwise a count. Strategies that register a
`size_option` (e.g. `filters`' fraction) are tuned by bisection on the real plan's learned count;
those with a `budget_option` (e.g. `auto`'s budget) are given the budget as a count and meet it themselves;
the others (full, head, block, norm, bias) have a fixed size and are reported as they are.
`tools/budget.py` is its command line.
"""
from __future__ import annotations

import copy
from typing import Optional

from .. import recipe as recipes
from ..data import load as load_data
from ..models import build
from ..strategies import apply_strategy
from ..strategies.registry import get


def learned_count(model, init_model, spec: dict, seed: int) -> tuple[int, int]:
    plan = apply_strategy(copy.deepcopy(model), spec, seed=seed, init_model=init_model)
    return plan.learned, plan.total


def match(model, init_model, spec: dict, target: float, seed: int = 0, steps: int = 30) -> tuple[dict, int]:
    """The spec with its size option set so that learned params come closest to `target`
    (a fraction < 1 of the total, or a count); returns (spec, learned)."""
    spec = {k: v for k, v in spec.items() if k != "count"}
    option = get(spec["name"]).size_option
    total = sum(p.numel() for p in model.parameters())
    goal = target * total if target < 1 else target
    if get(spec["name"]).budget_option:  # it chooses under the budget itself (from data: not planned here)
        return {**spec, get(spec["name"]).budget_option: int(goal)}, int(goal)
    learned, total = learned_count(model, init_model, spec, seed)
    if option is None:
        return spec, learned
    lo, hi = 1e-6, 1.0
    best = (float("inf"), spec, learned)
    for _ in range(steps):  # learned(fraction) is non-decreasing: bisect
        mid = (lo * hi) ** 0.5 if hi / lo > 4 else (lo + hi) / 2
        trial = {**spec, option: round(mid, 6)}
        learned, _ = learned_count(model, init_model, trial, seed)
        best = min(best, (abs(learned - goal), trial, learned), key=lambda b: b[0])
        if learned < goal:
            lo = mid
        else:
            hi = mid
    return best[1], best[2]


def match_all(recipe: recipes.Recipe, specs: list[dict], target: float) -> list[dict]:
    """Match every spec of a sweep to the budget; prints what each landed on."""
    bundle = load_data(recipe.data, seed=recipe.train.seed)
    model, init_model = build(recipe.model, bundle.num_classes, seed=recipe.train.seed)
    total = sum(p.numel() for p in model.parameters())
    goal = target * total if target < 1 else target
    out = []
    for spec in specs:
        matched, learned = match(model, init_model, spec, target, recipe.train.seed)
        off = learned / goal - 1
        print(f"budget {goal:,.0f}: {matched} learns {learned:,} ({off:+.1%})", flush=True)
        out.append(matched)
    return out


def controls(recipe: recipes.Recipe, specs: list[dict], control: dict,
             tolerance: float = 0.1) -> list[tuple[dict, Optional[dict]]]:
    """Each spec with its equal-budget control: `control` (a random selection, e.g. filters with
    select: random) sized to the spec's learned count. None where the spec learns everything, or the
    control cannot come within `tolerance` of its count (e.g. below the control's smallest size)."""
    bundle = load_data(recipe.data, seed=recipe.train.seed)
    model, init_model = build(recipe.model, bundle.num_classes, seed=recipe.train.seed)
    out = []
    for spec in specs:
        learned, total = learned_count(model, init_model, spec, recipe.train.seed)
        if learned >= total:  # learning everything has no random subset to compare with
            print(f"control for {spec}: none (it learns every parameter)", flush=True)
            out.append((spec, None))
            continue
        matched, got = match(model, init_model, control, learned, recipe.train.seed)
        fits = abs(got / learned - 1) <= tolerance and matched != spec
        why = "" if fits else f" (not within {tolerance:.0%} of it: no control)"
        print(f"control for {spec}: {matched} learns {got:,} of {learned:,}{why}", flush=True)
        out.append((spec, matched if fits else None))
    return out
