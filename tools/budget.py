"""Budget matching: choose each strategy's size so that all learn about the same number of parameters.

    python tools/budget.py --recipe recipes/quickstart.yaml --budget 0.02 --strategy name=filters,dim=in

A budget below 1 is a fraction of the model's parameters, otherwise a count. The sizing itself is
partial_ft.size_to_budget (partial_ft/budget.py): a strategy's `size_option` (`filters`' fraction, `lora`'s
rank) is bisected on the real plan's learned count; a `budget_option` (`auto`'s budget) is given the
budget as a count; the others (full, head, block, norm, bias) have a fixed size and are reported as they are.
"""
from __future__ import annotations

import argparse
from typing import Optional

import datasets

import partial_ft
from partial_ft import Recipe, build_model, load_data, load_recipe, parse_yaml


def learned_count(model, init_model, spec: dict, seed: int) -> tuple[int, int]:
    return partial_ft.learned_count(model, spec, seed=seed, init_model=init_model)


def match(model, init_model, spec: dict, target: float, seed: int = 0, steps: int = 30) -> tuple[dict, int]:
    """The spec with its size option set so that learned params come closest to `target`
    (a fraction < 1 of the total, or a count); returns (spec, learned)."""
    return partial_ft.size_to_budget(model, spec, target, seed=seed, init_model=init_model, steps=steps)


def match_all(recipe: Recipe, specs: list[dict], target: float) -> list[dict]:
    """Match every spec of a sweep to the budget; prints what each landed on."""
    bundle = load_data(recipe.data, seed=recipe.train.seed)
    model, init_model = build_model(recipe.model, bundle.num_classes, seed=recipe.train.seed)
    total = sum(p.numel() for p in model.parameters())
    goal = target * total if target < 1 else target
    out = []
    for spec in specs:
        matched, learned = match(model, init_model, spec, target, recipe.train.seed)
        off = learned / goal - 1
        print(f"budget {goal:,.0f}: {matched} learns {learned:,} ({off:+.1%})", flush=True)
        out.append(matched)
    return out


def controls(recipe: Recipe, specs: list[dict], control: dict,
             tolerance: float = 0.1) -> list[tuple[dict, Optional[dict]]]:
    """Each spec with its equal-budget control: `control` (a random selection, e.g. filters with
    select: random) sized to the spec's learned count. None where the spec learns everything, or the
    control cannot come within `tolerance` of its count (e.g. below the control's smallest size)."""
    bundle = load_data(recipe.data, seed=recipe.train.seed)
    model, init_model = build_model(recipe.model, bundle.num_classes, seed=recipe.train.seed)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True)
    p.add_argument("--budget", type=float, required=True, help="fraction (< 1) or count of parameters")
    p.add_argument("--strategy", action="append", required=True,
                   help="a strategy as key=value pairs, e.g. name=filters,dim=in (repeatable)")
    args = p.parse_args()
    datasets.disable_progress_bars()
    specs = [{k: parse_yaml(v, f"--strategy {k}") for k, v in (kv.split("=", 1) for kv in s.split(","))}
             for s in args.strategy]
    match_all(load_recipe(args.recipe), specs, args.budget)


if __name__ == "__main__":
    main()
