"""Command line: `python -m partial_ft [train] --recipe R [section.key=value ...]`, `... strategies`.

Argument parsing only; the work lives in train.py. A user mistake prints one `error: ...` line and
exits with code 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from .errors import UserError

COMMANDS = ("train", "strategies")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m partial_ft",
                                description="Learn a small part of a timm backbone's weights on a new task.")
    sub = p.add_subparsers(dest="command")
    t = sub.add_parser("train", help="train as a recipe says (the default command)")
    t.add_argument("--recipe", required=True, help="recipe YAML file")
    t.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides (values are YAML)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    sub.add_parser("strategies", help="list the strategies with their options and defaults")
    return p




def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS + ("-h", "--help"):
        argv = ["train", *argv]
    parser = _parser()
    parser.error = lambda message: _fail(message)  # one line, exit 2, like every user mistake
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            sub.error = lambda message: _fail(message)
    args = parser.parse_args(argv)
    try:
        if args.command == "strategies":
            return _strategies()
        return _train(args)
    except UserError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _fail(message: str) -> int:
    print(f"error: {message.strip().splitlines()[-1] if message.strip() else message}", file=sys.stderr)
    sys.exit(2)


def _train(args: argparse.Namespace) -> int:
    import datasets

    from . import recipe as recipes
    from .train import run

    recipe = recipes.load(args.recipe, args.overrides)
    datasets.disable_progress_bars()  # our own progress bar is the one that matters
    run(recipe, overwrite=args.overwrite)
    return 0


def _strategies() -> int:
    from .strategies import list_strategies

    for s in list_strategies():
        aliases = f" (alias: {', '.join(s.aliases)})" if s.aliases else ""
        print(f"{s.name}{aliases}: {s.summary}")
        for key, value in s.option_defaults().items():
            print(f"    {key}: {value}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
