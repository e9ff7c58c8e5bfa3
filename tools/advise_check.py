"""Check an advice against the exhaustive tuned sweep on the validation split: is the recommended candidate
within 0.01 of the best one at or below the budget? (docs/advise.md, "Checking the advice")

    python tools/advise_check.py --advice DIR --grid               # write DIR/check.yaml (advise writes it too)
    python -m partial_ft sweep --recipe DIR/base_recipe.yaml --grid DIR/check.yaml --out DIR/check
    python tools/advise_check.py --advice DIR [--results DIR/check/results.csv]    # print, write DIR/check.md
"""
from __future__ import annotations

import argparse
import sys

from partial_ft import UserError, advise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--advice", required=True, help="the advise folder (its state.json)")
    p.add_argument("--results", help="the check sweep's results.csv (default: DIR/check/results.csv)")
    p.add_argument("--grid", nargs="?", const="", default=None, metavar="PATH",
                   help="write the check sweep's grid instead (default PATH: DIR/check.yaml) and print its command")
    args = p.parse_args(argv)
    try:
        if args.grid is not None:
            path = advise.write_check_grid(args.advice, args.grid or None)
            print(f"wrote {path}; run the check sweep with:\n  {advise.sweep_command(args.advice, path)}")
            return 0
        text, _ = advise.check_advice(args.advice, args.results)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
