"""Cheap ensembles (the paper's ensemble section): N members share one fixed backbone and each learns its
own subset; compare with N independently trained full models.

    python tools/ensemble.py --recipe recipes/filters.yaml --members 3 --out ensembles/digits --full

Members differ by the strategy's `seed` (with `select: random`, a different subset learns in each),
so their fixed parts are one and the same backbone, and each member is just a delta over it. Reports
the mean member accuracy, the accuracy of the averaged predictions, total learned parameters and the
bytes stored, for the cheap ensemble and (with --full) for N full models trained from different seeds.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import datasets
import torch

import partial_ft
from partial_ft import RunFolder, UserError, eval_loader, eval_transform, load_data, load_delta, load_recipe


@torch.no_grad()
def member_logits(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of a run's delta on the run's own validation split, in dataset order."""
    folder = RunFolder(run_dir)
    recipe = folder.read_recipe()
    model = load_delta(run_dir).eval()
    bundle = load_data(recipe.data, seed=recipe.train.seed)
    config = folder.read_summary()["data_config"]
    logits, labels = [], []
    for x, y, _ in eval_loader(bundle, recipe.data, eval_transform(config), 256, recipe.train.seed):
        logits.append(model(x).float())
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def train_member(args: argparse.Namespace, spec: dict, seed: int, run_dir: Path) -> None:
    """One member: the base recipe with its strategy and seed, in its own run folder (a finished member is
    kept, not trained again)."""
    try:
        RunFolder(run_dir).read_summary()
        return  # finished before
    except UserError:
        pass
    recipe = load_recipe(args.recipe, args.overrides)
    recipe.strategy, recipe.train.seed, recipe.train.progress, recipe.output.dir = spec, seed, False, str(run_dir)
    if args.launcher == "inprocess":
        partial_ft.run(recipe, overwrite=True)
        return
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(recipe.to_yaml())
    launch = [sys.executable, "-m", "partial_ft"] if args.launcher == "python" else ["accelerate", "launch", "-m",
                                                                                  "partial_ft"]
    p = subprocess.run([*launch, "--recipe", str(path), "--overwrite"], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"error: {run_dir}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")


def report(run_dirs: list[Path]) -> dict:
    """Member accuracies, ensemble (averaged softmax) accuracy, learned params and stored bytes."""
    outputs = [member_logits(d) for d in run_dirs]
    labels = outputs[0][1]
    accs = [(lg.argmax(1) == labels).float().mean().item() for lg, _ in outputs]
    probs = torch.stack([lg.softmax(1) for lg, _ in outputs]).mean(0)
    summaries = [RunFolder(d).read_summary() for d in run_dirs]
    return {
        "members": len(run_dirs),
        "member_top1": accs,
        "mean_member_top1": sum(accs) / len(accs),
        "ensemble_top1": (probs.argmax(1) == labels).float().mean().item(),
        "learned_params_total": sum(s["learned_params"] for s in summaries),
        "model_params": summaries[0]["total_params"],
        "delta_bytes_total": sum(s["delta_bytes"] for s in summaries),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True, help="base recipe; its strategy must have a `seed` option")
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--out", required=True)
    p.add_argument("--full", action="store_true", help="also train N independent full models (seeds 0..N-1)")
    p.add_argument("--launcher", choices=["python", "accelerate", "inprocess"], default="python")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides for every member")
    args = p.parse_args()
    datasets.disable_progress_bars()
    base = load_recipe(args.recipe, args.overrides)
    spec = dict(base.strategy) if isinstance(base.strategy, dict) else None
    if spec is None or "seed" not in spec:
        raise SystemExit("error: ensemble members need one strategy with a `seed` option (e.g. filters)")
    out = Path(args.out)
    groups = {"shared_backbone": [], "independent_full": []}
    for i in range(args.members):
        member = {**spec, "seed": i, "select": "random"}  # a different subset learns in each member
        train_member(args, member, base.train.seed, out / f"member{i}")
        groups["shared_backbone"].append(out / f"member{i}")
        if args.full:
            train_member(args, {"name": "full"}, i, out / f"full{i}")
            groups["independent_full"].append(out / f"full{i}")
    results = {name: report(dirs) for name, dirs in groups.items() if dirs}
    (out / "ensemble.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| ensemble | members | mean member top-1 | ensemble top-1 | learned params | stored |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['members']} | {r['mean_member_top1']:.4f} | {r['ensemble_top1']:.4f} | "
                     f"{r['learned_params_total']:,} | {r['delta_bytes_total'] / 2**20:.1f} MiB |")
    (out / "ensemble.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'ensemble.json'} and {out / 'ensemble.md'}")


if __name__ == "__main__":
    main()
