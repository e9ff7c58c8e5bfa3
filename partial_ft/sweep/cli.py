"""`python -m partial_ft sweep`: its arguments and what it prints."""
from __future__ import annotations

import argparse

HELP = "run a grid of strategies over a base recipe, each tuned on a carve-out of train (see docs/sweep.md)"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    s = sub.add_parser("sweep", help=HELP, description=HELP)
    s.add_argument("--recipe", required=True, help="base recipe")
    s.add_argument("--grid", required=True, help="grid YAML (strategies, seeds, tune, search, suite axes)")
    s.add_argument("--out", required=True, help="sweep folder (one run folder per run, results.csv / .md)")
    s.add_argument("overrides", nargs="*", metavar="section.key=value", help="extra overrides for every run")
    s.add_argument("--launcher", default="python",
                   help="python|accelerate|inprocess: each run in a `python -m partial_ft` process (default), under `accelerate launch`, or in "
                        "this process")
    s.add_argument("--jobs", type=int, default=1, help="runs at once in this process (one GPU each where there are enough)")
    s.add_argument("--storage", help="the study's Optuna storage URL: postgresql://..., mysql://..., sqlite:///PATH "
                   "or journal:PATH (default: a journal file in --out)")
    s.add_argument("--study", default="sweep", help="the study's name in the storage (default: sweep)")
    s.add_argument("--worker", action="store_true", help="join the study as one of many workers (needs --storage)")
    s.add_argument("--heartbeat", type=float, default=60.0,
                   help="seconds between a worker's heartbeats; a run whose worker misses 3 is taken over")
    what = s.add_mutually_exclusive_group()
    what.add_argument("--report", action="store_true", help="write results.csv / .md from the study now, and stop")
    what.add_argument("--status", action="store_true", help="print runs done / running / left, and stop")
    return s


def command(args: argparse.Namespace) -> int:
    """Run, report or show the sweep; 1 when runs failed (each named on stderr)."""
    import sys

    import datasets

    from . import api
    from .engine import Options

    datasets.disable_progress_bars()
    where = (args.recipe, args.grid, args.out, args.overrides, args.storage, args.study)
    if args.status:
        counts = api.status(*where)
        print(f"{'runs':8} {'done':>6} {'running':>8} {'left':>6} {'pruned':>7} {'failed':>7}")
        for kind, c in counts.items():
            print(f"{kind:8} {c.done:>6} {c.running:>8} {c.left:>6} {c.pruned:>7} {c.failed:>7}")
        return 0
    if args.report:
        path = api.report(*where)
        print(path.read_text() + f"wrote {path.with_suffix('.csv')} and {path}" if path else "no final run has finished yet")
        return 0
    from ..signals import Interrupted, Stopped

    options = Options(args.launcher, args.jobs, args.heartbeat, args.worker)
    try:
        done = api.run_sweep(args.recipe, args.grid, args.out, args.overrides, args.storage, args.study, options)
    except (Interrupted, Stopped) as e:  # an in-process run: it saved what it could; the study remembers the rest
        print(f"error: {e}; run the same command again to continue the sweep", file=sys.stderr)
        return 128 + e.signum
    if done.tables is not None:
        print(done.tables.read_text())
        print(f"wrote {done.tables.with_suffix('.csv')} and {done.tables}")
    for where_, why in done.failures:
        print(f"could not run {where_}: {why}", file=sys.stderr)
    return 1 if done.failures else 0
