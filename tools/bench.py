"""Training throughput of each strategy against full fine-tuning and against a plain PyTorch loop.

Each strategy runs as a real `python -m partial_ft` job (a fresh process, so peak memory is its own) on
the built-in digits data resized to --size; the reference is a minimal hand-written loop over in-memory
tensors with the same model, batch size and optimizer. Ratios are what matter: they compare runs made
one after the other on the same machine. `*_cached` rows freeze BatchNorm statistics so that the fixed
prefix's features are cached (train.cache_features: auto): their images/s are those of the epochs after
the first, and the table gives the one-off extraction time. The loader check times the data pipeline of
the quickstart recipe (random augmentation on) at the bench's size and batch, alone, against what its
training and every row consume: it should deliver at least twice as much.

    python tools/bench.py                       # resnet18, 64x64, batch 64, AdamW, on the GPU if there is one
    python tools/bench.py --size 32 --strategies full,head,filters_out --out bench.md
    python tools/bench.py --device cuda --set train.mixed_precision=bf16 --set train.channels_last=true
    python tools/bench.py --device cpu --set data.preload=true   # the preloaded pipeline on the CPU
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

STRATEGIES = {
    "full": {"name": "full"},
    "head": {"name": "head"},
    "head_cached": {"name": "head", "norm_stats": "freeze"},
    "middle_block": {"name": "block", "index": "middle"},
    "middle_block_cached": {"name": "block", "index": "middle", "norm_stats": "freeze"},
    "last_block": {"name": "block", "index": "last"},
    "filters_out": {"name": "filters", "fraction": 0.1, "dim": "out"},
    "filters_in": {"name": "filters", "fraction": 0.1, "dim": "in"},
    "filters_spatial": {"name": "filters", "fraction": 0.1, "dim": "spatial"},
    "norm": {"name": "norm"},
    "bias": {"name": "bias"},
    "lora": {"name": "lora", "rank": 8},
}


def plain_loop(args: argparse.Namespace, warmup: int) -> float:
    """Images/s of the simplest correct training loop: model, AdamW, cross-entropy, in-memory batches
    (a few distinct ones, cycled, so that each step reads fresh inputs as a real loop does), on the
    bench's device, with the mixed precision and memory layout that --set gives the runs."""
    import timm
    import torch

    overrides = dict(item.split("=", 1) for item in args.set)
    precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(overrides.get("train.mixed_precision", "no"))
    layout = torch.channels_last if overrides.get("train.channels_last", "false").lower() in ("true", "1", "yes", "on") \
        else torch.contiguous_format
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=10).train().to(device, memory_format=layout)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    scaler = torch.amp.GradScaler(device.type, enabled=precision is torch.float16)
    batches = [(torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=layout),
                torch.randint(0, 10, (args.batch,), device=device)) for _ in range(4)]
    for i in range(warmup + args.steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        x, y = batches[i % len(batches)]
        with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    seconds = time.perf_counter() - start
    del model, opt, batches
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the strategy runs are other processes: leave them the GPU's memory
    return args.steps * args.batch / seconds


def _sync(device) -> None:
    """Wait for the GPU's queued work (timings must include it)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _env(args: argparse.Namespace) -> dict:
    """Offline, and on the bench's device."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "ACCELERATE_USE_CPU": "true" if args.device == "cpu" else "false"}


def run_strategy(name: str, spec: dict, args: argparse.Namespace, workdir: Path) -> dict:
    """Run one strategy through the real CLI and return its summary."""
    recipe = {
        "model": {"name": args.model},
        "data": {"dataset": "digits", "input_size": args.size, "crop_pct": 1.0, "augment": False,
                 "num_workers": args.workers, "max_val_samples": 64},
        "strategy": spec,
        # the epoch loop's throughput: a cached head would otherwise be solved exactly (no steps to time)
        "train": {"max_steps": args.steps, "batch_size": args.batch, "lr": args.lr, "opt": "adamw",
                  "progress": False, "seed": 0, "solver": "loop"},
        "output": {"dir": str(workdir / name)},
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    p = subprocess.run([sys.executable, "-m", "partial_ft", "--recipe", str(path), "--overwrite", *args.set],
                       capture_output=True, text=True, env=_env(args))
    if p.returncode != 0:
        raise SystemExit(f"{name} failed:\n{p.stderr[-2000:]}")
    from partial_ft import RunFolder

    return RunFolder(workdir / name).read_summary()


def loader_check(args: argparse.Namespace, workdir: Path) -> dict:
    """The quickstart recipe (random augmentation on) at the bench's size and batch: its train loader
    alone (whole epochs, for at least two seconds) against its training."""

    from partial_ft import RunFolder, load_recipe, prepare_run, shutdown_workers

    recipe_path = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    out = workdir / "quickstart"
    overrides = [f"output.dir={out}", f"data.input_size={args.size}", f"train.batch_size={args.batch}",
                 f"data.num_workers={args.workers}", *args.set]
    p = subprocess.run([sys.executable, "-m", "partial_ft", "--recipe", str(recipe_path), "--overwrite",
                        f"train.max_steps={args.steps}", "train.progress=false", *overrides],
                       capture_output=True, text=True, env=_env(args))
    if p.returncode != 0:
        raise SystemExit(f"quickstart failed:\n{p.stderr[-2000:]}")
    summary = RunFolder(out).read_summary()
    os.environ["ACCELERATE_USE_CPU"] = _env(args)["ACCELERATE_USE_CPU"]
    setup = prepare_run(load_recipe(recipe_path, overrides))
    dl = setup.train_loader
    for i, _ in enumerate(dl):  # first pass starts the workers; not timed
        if i == 2:
            break
    start, images, epoch = time.perf_counter(), 0, 0
    while time.perf_counter() - start < 2.0 and epoch < 50:
        epoch += 1
        dl.dataset.set_epoch(epoch)
        for x, _, _ in dl:
            images += x.shape[0]
        _sync(x.device)
    seconds = time.perf_counter() - start
    shutdown_workers(dl)
    return {"loader": images / seconds, "training": summary["train_images_per_second"],
            "workers": setup.recipe.data.num_workers, "preload": summary.get("preload", "off"),
            "device": str(x.device)}


def _machine(args: argparse.Namespace) -> str:
    import torch

    where = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}"
    if args.device == "cuda":
        where = f"{torch.cuda.get_device_name()} ({where})"
    return f"{where}, torch {torch.__version__}"


def markdown(rows: list[dict], args: argparse.Namespace, plain: float, loader: dict | None = None) -> str:
    """The table: each row against full and the plain loop, and (with the loader check) against the
    loader alone."""
    full = next((r["images_per_second"] for r in rows if r["strategy"] == "full"), None)
    lines = [
        f"Machine: {_machine(args)}; {args.model}, {args.size}x{args.size}, batch {args.batch}, "
        f"AdamW, {args.steps} steps{'; ' + ' '.join(args.set) if args.set else ''}. "
        f"Plain PyTorch loop: {plain:.0f} images/s (mean of a measurement before and one after the runs).",
        "",
        "| strategy | learned params | images/s | × full | × plain loop | optimizer state | peak memory | feature cache |"
        + (" loader ÷ training |" if loader else ""),
        "|---|---:|---:|---:|---:|---:|---:|---|" + ("---:|" if loader else ""),
    ]
    for r in rows:
        vs_full = f"{r['images_per_second'] / full:.2f}" if full else "–"
        fc = r.get("feature_cache")
        cached = f"{fc['cut']}, extracted once in {r['feature_extract_seconds']:.1f} s" if fc else "–"
        lines.append(f"| {r['strategy']} | {r['learned_params']:,} ({100 * r['learned_fraction']:.1f}%) | "
                     f"{r['images_per_second']:.0f} | {vs_full} | {r['images_per_second'] / plain:.2f} | "
                     f"{r['optimizer_state_bytes'] / 2**20:.1f} MiB | {r['peak_memory_bytes'] / 2**30:.2f} GiB | "
                     f"{cached} |" + (f" {loader['loader'] / r['images_per_second']:.1f} |" if loader else ""))
    if loader:
        lines += ["", f"Data pipeline (recipes/quickstart.yaml, {loader['workers']} workers): the loader alone "
                      f"delivers {loader['loader']:.0f} images/s, training consumes {loader['training']:.0f} images/s "
                      f"({loader['loader'] / loader['training']:.1f}×); at {args.size}x{args.size}, batch "
                      f"{args.batch}, random augmentation on, preload: {loader['preload']}; batches on "
                      f"{loader['device']}. The last column compares the loader alone with each row."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3, help="plain-loop steps not timed")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma list of {', '.join(STRATEGIES)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe override for every run, e.g. train.mixed_precision=bf16 (repeatable)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where everything trains (auto: the GPU if there is one)")
    p.add_argument("--no-loader", action="store_true", help="skip the data pipeline check")
    p.add_argument("--out", default="bench.md", help="markdown table to write")
    args = p.parse_args()
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise SystemExit(f"error: unknown bench strategies {unknown}; known: {', '.join(STRATEGIES)}")

    # the reference is measured before and after the runs: CPU speed drifts, and ratios near 1 matter
    before = plain_loop(args, args.warmup)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            s = run_strategy(name, STRATEGIES[name], args, Path(tmp))
            rows.append({"strategy": name, "images_per_second": s["train_images_per_second"], **{
                k: s.get(k) for k in ("learned_params", "learned_fraction", "optimizer_state_bytes",
                                      "peak_memory_bytes", "feature_cache", "feature_extract_seconds")}})
            print(f"{name:20s} {s['train_images_per_second']:8.0f} img/s", flush=True)
        loader = None if args.no_loader else loader_check(args, Path(tmp))
    after = plain_loop(args, args.warmup)
    print(f"plain loop: {before:.0f} images/s before the runs, {after:.0f} after", flush=True)
    plain = (before + after) / 2
    table = markdown(rows, args, plain, loader)
    print(table)
    Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
