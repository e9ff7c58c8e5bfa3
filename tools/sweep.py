"""Run a grid of strategies x options x seeds (x datasets x models) over one base recipe, each strategy
tuned on a carve-out of train; tabulate accuracy and cost per learned parameter.

    python tools/sweep.py --recipe recipes/quickstart.yaml --grid recipes/sweeps/paper_digits.yaml --out sweeps/digits
    python tools/sweep.py ... --launcher accelerate      # each run as `accelerate launch -m partial_ft`
    python tools/sweep.py ... --jobs 4                   # 4 runs at once (one GPU each where there are GPUs)

The grid file's keys are described in tools/grid.py. With `tune:`, every configuration first runs each
candidate once (first seed) on train minus a stratified carve-out of `tune_fraction`, validating on that
carve-out (runs under <out>/tune/); the best candidate's values then train the final runs, on all of
train, for every seed. The validation split is never used for a choice. Each run gets its own folder; a
run whose folder holds summary.json is skipped, so an interrupted sweep continues where it stopped.
results.csv / results.md aggregate over seeds (see tools/results.py).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import datasets
import yaml

from partial_ft import recipe as recipes
from partial_ft import yamlsafe
from partial_ft.errors import UserError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling tool modules
import budget  # noqa: E402
import grid as grids  # noqa: E402
import results  # noqa: E402

expand, label = grids.expand, grids.label  # kept importable from here (older scripts and tests)


@dataclass
class Job:
    """One run: its folder, its raw recipe, and what it is, in words."""

    run_dir: Path
    raw: dict
    where: str
    summary: Optional[dict] = None
    error: Optional[str] = None
    skipped: bool = False
    extra: dict = field(default_factory=dict)


def make_raw(base: dict, overrides: list[str], spec: dict, seed: int, run_dir: Path,
             tune_fraction: Optional[float] = None) -> dict:
    """The raw recipe of one run: base + overrides, the strategy, the seed, the folder (and the carve-out)."""
    raw = recipes.apply_overrides(base, overrides)
    raw["strategy"] = spec
    raw.setdefault("train", {})["seed"] = seed
    raw["train"]["progress"] = False
    raw.setdefault("output", {})["dir"] = str(run_dir)
    if tune_fraction is not None:
        raw.setdefault("data", {}).update(tune_fraction=tune_fraction, tune_seed=0)
    return raw


def run_one(job: Job, launcher: str, device: Optional[str] = None) -> Job:
    """Train one run (unless finished already); fills job.summary, or job.error with the reason."""
    summary_path = job.run_dir / "summary.json"
    if summary_path.is_file():
        job.summary, job.skipped = json.loads(summary_path.read_text()), True
        return job
    job.run_dir.parent.mkdir(parents=True, exist_ok=True)
    recipe_path = job.run_dir.parent / f"{job.run_dir.name}.yaml"
    recipe_path.write_text(yaml.safe_dump(job.raw, sort_keys=False))
    if launcher == "inprocess":
        from partial_ft.train import run

        try:
            job.summary = run(recipes.load(recipe_path), overwrite=True)
        except UserError as e:
            job.error = str(e)
        return job
    # `accelerate launch` of this interpreter's accelerate, not whichever `accelerate` is first on PATH
    launch = [sys.executable, "-m", "accelerate.commands.launch"] if launcher == "accelerate" else [sys.executable]
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": device} if device is not None else {})}
    p = subprocess.run([*launch, "-m", "partial_ft", "--recipe", str(recipe_path), "--overwrite"],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        job.error = next((line for line in reversed(lines) if line.startswith("error:")), "\n".join(lines[-15:]))
    else:
        job.summary = json.loads(summary_path.read_text())
    return job


def run_all(jobs: list[Job], launcher: str, n: int) -> None:
    """Run the jobs, `n` at once; on a machine with at least n GPUs each concurrent run gets its own
    (CUDA_VISIBLE_DEVICES). Prints one line per run as it ends."""
    if n > 1 and launcher == "inprocess":
        raise UserError("--jobs > 1 needs separate processes (--launcher python or accelerate)")
    devices = [None] * n
    if n > 1:
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() >= n:
            devices = [str(i) for i in range(n)]
    free = list(range(n))

    def work(job: Job) -> Job:
        slot = free.pop()  # list.pop/append are atomic: each running job holds one slot
        try:
            return run_one(job, launcher, devices[slot])
        finally:
            free.append(slot)

    def report(job: Job) -> None:
        if job.error:
            print(f"{job.where}: FAILED: {job.error}", flush=True)
        else:
            print(f"{job.where}: val_top1 {job.summary['val_top1']:.4f}  learned "
                  f"{job.summary['learned_params']:,}{'  (finished before: skipped)' if job.skipped else ''}",
                  flush=True)

    if n == 1:  # in this thread: an in-process run's Ctrl-C / SIGTERM handling needs the main thread
        for job in jobs:
            report(run_one(job, launcher))
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        for future in concurrent.futures.as_completed([pool.submit(work, j) for j in jobs]):
            report(future.result())


def preflight(jobs: list[Job]) -> None:
    """Every run's recipe is validated before the first one starts; the first invalid one is named."""
    for job in jobs:
        try:
            recipes.from_dict(job.raw, name=job.run_dir.name)
        except UserError as e:
            raise UserError(f"{job.where}: {e}") from None


def plan_configs(grid: grids.Grid, base_path: Path, cli: list[str]) -> list[grids.Config]:
    """The configurations, sized by the budget and followed by their random controls (per dataset and model)."""
    configs = grids.configurations(grid)
    if grid.budget is None and grid.controls is None:
        return configs
    out = []
    for dataset in grid.datasets or [None]:
        for model in grid.models or [None]:
            axis = grids.Config({}, dataset, model)
            recipe = recipes.load(base_path, [*grid.overrides, *axis.overrides(), *cli])
            specs = budget.match_all(recipe, grid.strategies, grid.budget) if grid.budget else grid.strategies
            pairs = budget.controls(recipe, specs, grid.controls) if grid.controls else [(s, None) for s in specs]
            for spec, control in pairs:
                out.append(grids.Config(spec, dataset, model))
                if control is not None:
                    out.append(grids.Config(control, dataset, model, control_for=grids.label(spec)))
    return out


def tune_jobs(configs: list[grids.Config], grid: grids.Grid, base: dict, overrides: list[str],
              out: Path) -> dict[int, list[Job]]:
    """Per configuration (by index): one run per candidate, first seed, on the carve-out."""
    jobs: dict[int, list[Job]] = {}
    for i, config in enumerate(configs):
        for candidate in grids.candidates(grid.tune):
            run_dir = out / "tune" / config.folder() / \
                f"{grids.slug(config.label)}_{grids.candidate_id(candidate)}_seed{grid.seeds[0]}"
            raw = make_raw(base, [*overrides, *config.overrides(), *grids.candidate_overrides(candidate)],
                           config.spec, grid.seeds[0], run_dir, grid.tune_fraction)
            jobs.setdefault(i, []).append(Job(run_dir, raw, f"tune {config.where()} {candidate}",
                                              extra={"candidate": candidate}))
    return jobs


def choose(jobs: list[Job]) -> tuple[dict[str, Any], float]:
    """The candidate with the best carve-out accuracy (the first listed on a tie), and that accuracy."""
    done = [j for j in jobs if j.summary]
    if not done:
        raise UserError(f"{jobs[0].where}: every tuning candidate failed")
    best = max(done, key=lambda j: j.summary["val_top1"])  # max keeps the first of equals
    return best.extra["candidate"], best.summary["val_top1"]


def final_jobs(configs: list[grids.Config], grid: grids.Grid, base: dict, overrides: list[str], out: Path,
               chosen: dict[int, tuple[dict, float]]) -> list[Job]:
    jobs = []
    for i, config in enumerate(configs):
        candidate, tune_top1 = chosen.get(i, ({}, None))
        stem = grids.slug(config.label) + (f"_{grids.candidate_id(candidate)}" if candidate else "")
        for seed in grid.seeds:
            run_dir = out / config.folder() / f"{stem}_seed{seed}"
            raw = make_raw(base, [*overrides, *config.overrides(), *grids.candidate_overrides(candidate)],
                           config.spec, seed, run_dir)
            jobs.append(Job(run_dir, raw, f"{config.where()} seed {seed}",
                            extra={"config": config, "chosen": candidate, "tune_top1": tune_top1,
                                   "dataset": raw.get("data", {}).get("dataset", recipes.DataCfg().dataset)}))
    return jobs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True, help="base recipe")
    p.add_argument("--grid", required=True, help="grid YAML (see tools/grid.py)")
    p.add_argument("--out", required=True, help="sweep folder (one run folder per grid point)")
    p.add_argument("--launcher", choices=["python", "accelerate", "inprocess"], default="python")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (one GPU each where there are enough)")
    p.add_argument("overrides", nargs="*", help="extra section.key=value overrides for every run")
    args = p.parse_args(argv)
    datasets.disable_progress_bars()
    try:
        failed = sweep(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if failed:
        raise SystemExit(1)


def sweep(args: argparse.Namespace) -> int:
    """The whole sweep; returns how many runs failed (their configurations are named)."""
    if args.jobs < 1:
        raise UserError("--jobs must be >= 1")
    grid = grids.load(args.grid)
    base_path, out = Path(args.recipe), Path(args.out)
    recipes.load(base_path)  # the base recipe itself is valid
    base = yamlsafe.load_file(base_path, "recipe") or {}
    overrides = [*grid.overrides, *args.overrides]
    configs = plan_configs(grid, base_path, args.overrides)
    tuning = tune_jobs(configs, grid, base, overrides, out) if grid.tune else {}
    preflight([j for js in tuning.values() for j in js] + final_jobs(configs, grid, base, overrides, out, {}))
    out.mkdir(parents=True, exist_ok=True)
    failures = []
    if tuning:
        run_all([j for js in tuning.values() for j in js], args.launcher, args.jobs)
        failures += [j for js in tuning.values() for j in js if j.error]
    chosen = {}
    for i, jobs in tuning.items():
        if any(j.summary for j in jobs):
            chosen[i] = choose(jobs)
    finals = [j for j in final_jobs(configs, grid, base, overrides, out, chosen)
              if not tuning or j.extra["config"] in [configs[i] for i in chosen]]
    run_all(finals, args.launcher, args.jobs)
    failures += [j for j in finals if j.error]
    rows = [{**j.summary, **j.extra} for j in finals if j.summary]
    if rows:
        table = results.aggregate(rows, list(grid.tune))
        results.write_tables(table, out, list(grid.tune))
        print((out / "results.md").read_text())
        print(f"wrote {out / 'results.csv'} and {out / 'results.md'}")
    for job in failures:
        print(f"could not run {job.where}: {job.error}", file=sys.stderr)
    return len(failures)


if __name__ == "__main__":
    main()
