"""What pruning costs and what it changes: one grid swept with its pruner (e.g. `halving`) and with
`pruner: none` (every candidate trains to its end), and optionally by several worker processes of one study.

    python tools/make_transfer.py --out transfer
    python tools/pruning.py --recipe recipes/quickstart.yaml --grid recipes/sweeps/suite_offline.yaml \
        --out sweeps/pruning --dataset transfer --jobs 2 --workers 2

`--dataset` keeps one dataset of a suite. Both sweeps run in OUT/<pruner>/ (single process, `--jobs` runs at
once), the pruned one first; its tables are kept as OUT/<pruner>.csv / .md. The none sweep then reuses its
finished runs and resumes its pruned ones to their end (their steps and seconds count whole), so only what
pruning skipped is trained; its tables are OUT/none.csv / .md. With `--workers N`, the grid with `pruner: none`
is swept from scratch by one process (OUT/one/) and by N processes of one journal study (OUT/workers/); none,
because with a pruner what is pruned depends on which of the runs going at once reports first.
OUT/pruning.md (printed too) has, per configuration, the learning rate each sweep chose, its tuning runs
(pruned), optimizer steps and seconds, and the final validation top-1 over the grid's seeds; the totals and
their ratio; and, with workers, whether their results.csv equals the single process's (timings and memory
aside) and whether any run was trained twice.
Rerunning the command continues (the pruned sweep, once its tables are kept, is not run again).
"""
from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

from partial_ft import UserError, parse_yaml, sweep

TIMING = {"tune_seconds", "train_seconds", "images_per_second", "peak_memory_mib"}  # differ run to run
KEY = ("dataset", "model", "options")  # a configuration's row in results.csv
# the line a sweep prints per finished or pruned run; group 1 names the run
RUN_LINE = re.compile(r"^(.*?): (?:val_top1 |pruned after |FAILED: ).*\[\d+/\d+ done")


def grid_as_run(path: Path, dataset: str | None) -> dict:
    """The grid file, with only `dataset` of its suite's datasets when one is named."""
    raw = parse_yaml(path.read_text(), str(path))
    if dataset is not None:
        kept = [d for d in raw.get("datasets", []) if d.get("name") == dataset]
        if not kept:
            raise UserError(f"--dataset {dataset!r}: the grid has no such dataset")
        raw["datasets"] = kept
    return raw


def sweep_once(recipe: Path, grid: dict, out: Path, jobs: int, launcher: str) -> list[dict]:
    """Run (or continue) one sweep of `grid` into `out`; its results.csv rows."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    done = sweep.run_sweep(recipe, path, out, options=sweep.Options(launcher=launcher, jobs=jobs))
    if done.failures:
        raise SystemExit(f"error: runs failed in {out}: {done.failures}")
    return read_rows(out / "results.csv")


def sweep_workers(recipe: Path, grid: dict, out: Path, workers: int, launcher: str) -> tuple[list[dict], Counter]:
    """`workers` processes of one journal study on the same folder; their rows, and how often each run's
    line was printed across all of them (a run trained twice prints twice)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    study = [sys.executable, "-m", "partial_ft", "sweep", "--recipe", str(recipe), "--grid", str(path),
             "--out", str(out), "--storage", f"journal:{out / 'study.journal'}"]
    command = [*study, "--worker", "--launcher", launcher]
    logs = [out / f"worker{k}.log" for k in range(workers)]
    procs = [subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT) for log in logs]
    if any(p.wait() for p in procs):
        raise SystemExit(f"error: a worker failed; see {logs}")
    # the worker that ended the last run wrote the tables; write them once more from the study, all runs in
    subprocess.run([*study, "--report"], check=True, stdout=subprocess.DEVNULL)
    runs = (RUN_LINE.match(line) for log in logs for line in log.read_text().splitlines())
    printed = Counter(m.group(1) for m in runs if m)
    return read_rows(out / "results.csv"), printed


def keep_tables(rows: list[dict], runs: Path, to: Path) -> list[dict]:
    """Copy the sweep's results.csv and .md to `to`.csv / .md (the next sweep in the folder rewrites them)."""
    for suffix in (".csv", ".md"):
        to.with_suffix(suffix).write_text((runs / "results").with_suffix(suffix).read_text())
    return rows


def read_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def folders_trained(out: Path) -> int:
    """Run folders under `out` that trained (each has its metrics.jsonl, docs/run-folder.md)."""
    return sum(1 for path in out.rglob("metrics.jsonl") if path.is_file())


def compare(pruned: list[dict], full: list[dict], pruner: str) -> list[str]:
    """The table: per configuration, each sweep's choice, tuning cost and final top-1."""
    by_key = {tuple(r[k] for k in KEY): r for r in full}
    tuned = [c for c in pruned[0] if c.startswith("train.") or c.startswith("data.") or c.startswith("strategy.")]
    lines = [f"| dataset | strategy | chosen ({pruner} / none) | tuning runs (pruned): {pruner} / none | "
             f"tuning steps: {pruner} / none | tuning s: {pruner} / none | val top-1: {pruner} | val top-1: none "
             "| Δ |",
             "|---|---|---|---|---|---|---:|---:|---:|"]
    totals = Counter()
    for r in pruned:
        f = by_key[tuple(r[k] for k in KEY)]
        chosen = " / ".join(", ".join(row[c] for c in tuned) for row in (r, f))
        delta = float(r["val_top1_mean"]) - float(f["val_top1_mean"])
        lines.append(f"| {r['dataset']} | {r['options']} | {chosen} | {r['tune_trials']} ({r['tune_pruned']}) / "
                     f"{f['tune_trials']} ({f['tune_pruned']}) | {r['tune_steps']} / {f['tune_steps']} | "
                     f"{float(r['tune_seconds']):.0f} / {float(f['tune_seconds']):.0f} | {_acc(r)} | {_acc(f)} | "
                     f"{delta:+.4f} |")
        for name, row in ((pruner, r), ("none", f)):
            totals[f"{name} steps"] += int(row["tune_steps"])
            totals[f"{name} seconds"] += float(row["tune_seconds"])
        totals["worst"] = max(totals["worst"], abs(delta))
    steps, seconds = (totals[f"{pruner} {k}"] / totals[f"none {k}"] for k in ("steps", "seconds"))
    ours = f"{totals[f'{pruner} steps']:,} steps and {totals[f'{pruner} seconds']:.0f} s"
    lines += ["", f"Tuning, all configurations: {ours} "
              f"with {pruner}, {totals['none steps']:,} steps and {totals['none seconds']:.0f} s with none: "
              f"{steps:.0%} of the steps, {seconds:.0%} of the seconds. Largest final top-1 difference: "
              f"{totals['worst']:.4f}."]
    return lines


def _acc(row: dict) -> str:
    std = row["val_top1_std"]
    return f"{float(row['val_top1_mean']):.4f} ± {float(std):.4f}" if std not in ("", None) else row["val_top1_mean"]


def same_tables(one: list[dict], many: list[dict]) -> bool:
    """results.csv of one process and of several workers, timings and memory aside."""
    strip = [[(k, v) for k, v in r.items() if k not in TIMING] for r in one], \
            [[(k, v) for k, v in r.items() if k not in TIMING] for r in many]
    return strip[0] == strip[1]


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--recipe", type=Path, required=True)
    a.add_argument("--grid", type=Path, required=True, help="a grid with a pruner in its search section")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--dataset", help="only this dataset of the grid's suite")
    a.add_argument("--jobs", type=int, default=1, help="runs at once in each single-process sweep")
    a.add_argument("--launcher", default="python", help="python | accelerate | inprocess (with --jobs 1)")
    a.add_argument("--workers", type=int, default=0, help="also sweep with this many worker processes")
    args = a.parse_args(argv)
    try:
        grid = grid_as_run(args.grid, args.dataset)
        pruner = (grid.get("search") or {}).get("pruner", "none")
        if pruner == "none":
            raise UserError(f"{args.grid}: its search section has no pruner to compare with none")
        none = {**grid, "search": {**grid["search"], "pruner": "none"}}
        runs = args.out / pruner
        if not (args.out / f"{pruner}.csv").is_file():  # measured once: a rerun would find its runs trained on
            keep_tables(sweep_once(args.recipe, grid, runs, args.jobs, args.launcher), runs, args.out / pruner)
        pruned = read_rows(args.out / f"{pruner}.csv")
        # none in the same folder: finished runs are reused, pruned ones resumed to their end (their steps
        # and seconds count whole), so only what pruning skipped is trained
        full = keep_tables(sweep_once(args.recipe, none, runs, args.jobs, args.launcher), runs, args.out / "none")
        lines = [f"# {pruner} against none: {args.grid}" + (f", dataset {args.dataset}" if args.dataset else ""), "",
                 *compare(pruned, full, pruner)]
        if args.workers:  # the none grid: with a pruner, what is pruned depends on which run reported first
            one = sweep_once(args.recipe, none, args.out / "one", args.jobs, args.launcher)
            rows, printed = sweep_workers(args.recipe, none, args.out / "workers", args.workers, args.launcher)
            twice = sorted(k for k, n in printed.items() if n > 1)
            lines += ["", f"{args.workers} workers of one journal study against one process (pruner none): results.csv "
                      f"{'identical' if same_tables(one, rows) else 'DIFFERENT'} (timings and memory aside); "
                      f"{sum(printed.values())} runs reported, {len(twice)} more than once{': ' if twice else ''}"
                      f"{', '.join(twice)}; {folders_trained(args.out / 'workers')} run folders."]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = "\n".join(lines) + "\n"
    (args.out / "pruning.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
