"""Run a grid of strategies x options x seeds over one base recipe; tabulate accuracy per learned parameter.

    python tools/sweep.py --recipe recipes/quickstart.yaml --grid recipes/sweeps/paper_digits.yaml --out sweeps/digits
    python tools/sweep.py ... --launcher accelerate      # each run as `accelerate launch -m partial_ft`

A grid file is plain YAML:

    seeds: [0, 1, 2]
    overrides: [train.epochs=4]          # applied to every run
    budget: 0.02                          # optional: match every tunable strategy to 2% of the weights
    strategies:
      - {name: full}
      - {name: filters, fixed: random, grid: {fraction: [0.01, 0.1], dim: [out, in, spatial]}}

`grid` expands into the cartesian product of its lists. Each run gets its own folder under --out;
a run whose folder already holds summary.json is skipped, so an interrupted sweep continues where it
stopped. results.csv / results.md aggregate over seeds: mean ± std of val top-1.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import datasets
import yaml

from partial_ft import recipe as recipes
from partial_ft.strategies.registry import describe, parse_options

COLUMNS = ["strategy", "options", "learned_params", "learned_pct", "val_top1_mean", "val_top1_std", "seeds",
           "train_seconds", "images_per_second"]


def expand(strategies: list[dict]) -> list[dict]:
    """Each spec's `grid` mapping -> one spec per combination of its values."""
    out = []
    for spec in strategies:
        grid = spec.get("grid") or {}
        base = {k: v for k, v in spec.items() if k != "grid"}
        keys = list(grid)
        for values in itertools.product(*(grid[k] if isinstance(grid[k], list) else [grid[k]] for k in keys)):
            out.append({**base, **dict(zip(keys, values))})
    return out


def label(spec: dict) -> str:
    """A readable, stable label (strategy name + options that differ from their defaults)."""
    return describe(parse_options(spec))


def run_id(spec: dict, seed: int) -> str:
    text = label(spec).replace("(", "_").replace(")", "").replace(", ", "_").replace("=", "-")
    return f"{text}_seed{seed}"


def run_one(base: Path, overrides: list[str], spec: dict, seed: int, run_dir: Path, launcher: str) -> dict:
    """Train one grid point (unless finished already) and return its summary."""
    if (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text())
    raw = recipes.apply_overrides(yaml.safe_load(base.read_text()) or {}, overrides)
    raw["strategy"] = spec
    raw.setdefault("train", {})["seed"] = seed
    raw.setdefault("train", {})["progress"] = False
    raw.setdefault("output", {})["dir"] = str(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    recipe_path = run_dir.parent / f"{run_dir.name}.yaml"
    recipe_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    if launcher == "inprocess":
        from partial_ft.train import run

        return run(recipes.load(recipe_path), overwrite=True)
    # `accelerate launch` of this interpreter's accelerate, not whichever `accelerate` is first on PATH
    launch = [sys.executable, "-m", "accelerate.commands.launch"] if launcher == "accelerate" else [sys.executable]
    command = [*launch, "-m", "partial_ft"]
    p = subprocess.run([*command, "--recipe", str(recipe_path), "--overwrite"], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"run {run_dir.name} failed:\n{p.stderr[-2000:]}")
    return json.loads((run_dir / "summary.json").read_text())


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per strategy setting: mean and std of val top-1 over seeds."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["label"], []).append(r)
    out = []
    for name, runs in groups.items():
        accs = [r["val_top1"] for r in runs]
        first = runs[0]
        out.append({
            "strategy": first["spec"]["name"],
            "options": name,
            "learned_params": first["learned_params"],
            "learned_pct": 100 * first["learned_fraction"],
            "val_top1_mean": statistics.fmean(accs),
            "val_top1_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "seeds": len(accs),
            "train_seconds": statistics.fmean(r["train_seconds"] for r in runs),
            "images_per_second": statistics.fmean(r["train_images_per_second"] for r in runs),
        })
    return sorted(out, key=lambda r: (r["strategy"], r["learned_params"]))


def write_tables(results: list[dict], out: Path) -> None:
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(results)
    lines = ["| strategy | learned params | % of total | val top-1 (mean ± std) | seeds | train s | images/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['options']} | {r['learned_params']:,} | {r['learned_pct']:.2f}% | "
                     f"{r['val_top1_mean']:.4f} ± {r['val_top1_std']:.4f} | {r['seeds']} | "
                     f"{r['train_seconds']:.1f} | {r['images_per_second']:.0f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True, help="base recipe")
    p.add_argument("--grid", required=True, help="grid YAML (strategies, seeds, overrides, budget)")
    p.add_argument("--out", required=True, help="sweep folder (one run folder per grid point)")
    p.add_argument("--launcher", choices=["python", "accelerate", "inprocess"], default="python")
    p.add_argument("overrides", nargs="*", help="extra section.key=value overrides for every run")
    args = p.parse_args(argv)
    datasets.disable_progress_bars()
    grid = yaml.safe_load(Path(args.grid).read_text())
    overrides = list(grid.get("overrides", [])) + args.overrides
    specs = expand(grid["strategies"])
    if grid.get("budget"):
        from budget import match_all  # tools/budget.py

        specs = match_all(recipes.load(args.recipe, overrides), specs, grid["budget"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    seeds = grid.get("seeds", [0])
    for spec, seed in itertools.product(specs, seeds):
        run_dir = out / run_id(spec, seed)
        finished = (run_dir / "summary.json").is_file()
        summary = run_one(Path(args.recipe), overrides, spec, seed, run_dir, args.launcher)
        rows.append({**summary, "spec": spec, "label": label(spec)})
        print(f"{label(spec):60s} seed {seed}: val_top1 {summary['val_top1']:.4f}  "
              f"learned {summary['learned_params']:,}{'  (finished before: skipped)' if finished else ''}",
              flush=True)
    results = aggregate(rows)
    write_tables(results, out)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.csv'} and {out / 'results.md'}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
