"""Budget matching from the command line (the work is partial_ft.sweep.budget's, over the public API):

    python tools/budget.py --recipe recipes/quickstart.yaml --budget 0.02 --strategy name=filters,dim=in
"""
from __future__ import annotations

import argparse

import datasets

from partial_ft import load_recipe, parse_yaml, sweep


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
    sweep.budget.match_all(load_recipe(args.recipe), specs, args.budget)


if __name__ == "__main__":
    main()
