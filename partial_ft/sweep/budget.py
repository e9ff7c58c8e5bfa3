"""A grid's `budget:` and `controls:`: every strategy sized to learn about the same number of parameters,
and the equal-count random control beside each (the sizing itself is partial_ft.budget's).
`tools/budget.py` is its command line.
"""
from __future__ import annotations

from typing import Optional

from .. import recipe as recipes
from ..budget import learned_count, size_to_budget
from ..data import load as load_data
from ..models import build


def match(model, init_model, spec: dict, target: float, seed: int = 0, steps: int = 30) -> tuple[dict, int]:
    """The spec with its size option set so that learned params come closest to `target`
    (a fraction < 1 of the total, or a count); returns (spec, learned)."""
    return size_to_budget(model, spec, target, seed=seed, init_model=init_model, steps=steps)


def match_all(recipe: recipes.Recipe, specs: list[dict], target: float) -> list[dict]:
    """Match every spec of a sweep to the budget; prints what each landed on."""
    bundle = load_data(recipe.data, seed=recipe.train.seed)
    model, init_model = build(recipe.model, bundle.num_classes, seed=recipe.train.seed)
    total = sum(p.numel() for p in model.parameters())
    goal = target * total if target < 1 else target
    out = []
    for spec in specs:
        matched, learned = match(model, init_model, spec, target, recipe.train.seed)
        print(f"budget {goal:,.0f}: {matched} learns {learned:,} ({learned / goal - 1:+.1%})", flush=True)
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
        learned, total = learned_count(model, spec, seed=recipe.train.seed, init_model=init_model)
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
