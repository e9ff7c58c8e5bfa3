"""The `advise` command's arguments and its call (the work is run.advise's)."""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from ..signals import Interrupted, Stopped


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `advise` to the CLI's subcommands."""
    a = sub.add_parser("advise", help="which strategy for this data, parameter budget and time: tuned candidates, a "
                       "report, a recommended recipe (docs/advise.md)")
    a.add_argument("--recipe", required=True, help="recipe YAML file: the data and the backbone")
    a.add_argument("--budget", default="0.02", help="the most a candidate may learn: a fraction (0, 1) of the model's "
                   "parameters or a count (default 0.02)")
    a.add_argument("--time", default="30m", help="wall-clock limit, e.g. 90s, 20m, 2h (default 30m)")
    a.add_argument("--out", help="the advise folder (default: advice/<recipe name>); advising again continues it")
    a.add_argument("--train", action="store_true", help="then train the advised recipe on all of train")
    a.add_argument("--trials", type=int, default=6, help="learning rates tried per candidate, at most (default 6)")
    a.add_argument("--storage", help="an Optuna storage URL for the tuning studies (default: a file in the folder)")
    a.add_argument("--worker", action="store_true", help="join the studies in --storage with other processes")
    a.add_argument("--launcher", choices=["inprocess", "python", "accelerate"], default="inprocess",
                   help="how tuning runs start (default: in this process)")
    a.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides (values are YAML)")


def command(args: argparse.Namespace) -> int:
    """Run advise as the arguments say; print the report; 128 + signal number when a signal stopped it."""
    import datasets

    from .run import Request, advise, parse_budget, parse_time

    if args.trials < 1:
        raise UserError(f"--trials must be >= 1, got {args.trials}")
    if args.worker and not args.storage:
        raise UserError("--worker needs --storage URL: the studies the workers share")
    request = Request(args.recipe, parse_budget(args.budget), parse_time(args.time), args.time, args.out, args.train,
                      args.overrides, args.storage, args.worker, args.trials, args.launcher)
    datasets.disable_progress_bars()
    try:
        outcome = advise(request)
    except (Interrupted, Stopped) as e:  # before the advise folder was written: nothing to report yet
        print(f"error: interrupted before any advice was written ({e})", file=sys.stderr)
        return 128 + e.signum
    print(outcome.text)
    if outcome.signum:
        print(f"error: interrupted; the report so far is in {outcome.folder}; the same command continues",
              file=sys.stderr)
        return 128 + outcome.signum
    return 0
