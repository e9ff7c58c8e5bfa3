"""The training run: recipe -> data, model, strategy plan -> one Accelerate loop -> run folder.

Read it top to bottom: `run()` sets everything up, `train_loop()` is the loop, `evaluate()` measures.
"""
from __future__ import annotations

import json
import math
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch import nn
from tqdm.auto import tqdm

from . import __version__, data, models
from .errors import UserError
from .partial import partial_buffer_names
from .recipe import Recipe
from .strategies import Plan, apply_strategy


@dataclass
class Setup:
    """Everything a run needs, built and validated before the run folder is touched."""

    recipe: Recipe
    accelerator: Accelerator
    bundle: data.DataBundle
    model: nn.Module
    plan: Plan
    data_config: dict
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader


def prepare(recipe: Recipe) -> Setup:
    """Build data, model and plan; any user mistake surfaces here as a UserError, before any writing."""
    t = recipe.train
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.grad_accum_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        step_scheduler_with_optimizer=False,
    )
    set_seed(t.seed)
    models.check_name(recipe.model.name)  # fail fast, before any data is loaded
    with accelerator.main_process_first():  # the first process fills the datasets cache
        bundle = data.load(recipe.data, seed=t.seed)
    model, init_model = models.build(recipe.model, bundle.num_classes, seed=t.seed)
    plan = apply_strategy(model, recipe.strategy, seed=t.seed, init_model=init_model)
    data_config = models.data_config(model, recipe.data)
    train_tf, eval_tf, _ = data.transforms(recipe.data, data_config)
    skip = recipe.data.skip_bad_images
    workers = recipe.data.num_workers
    pin = accelerator.device.type == "cuda"
    train_ds = data.ImageDataset(bundle.train, bundle.image_column, bundle.label_column, train_tf, "train", skip)
    val_ds = data.ImageDataset(bundle.val, bundle.image_column, bundle.label_column, eval_tf, "validation", skip)
    train_loader = data.loader(train_ds, t.batch_size, True, workers, t.seed, pin)
    val_loader = data.loader(val_ds, t.eval_batch_size or 2 * t.batch_size, False, workers, t.seed, pin)
    return Setup(recipe, accelerator, bundle, model, plan, data_config, train_loader, val_loader)


def start_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to clobber a finished or started run unless asked to overwrite."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output.dir {run_dir} is a file, not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise UserError(f"run folder {run_dir} already holds a run; pass --overwrite to replace it "
                            "or set output.dir")
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create run folder {run_dir}: {e.strerror}") from None


def run(recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    """Train as the recipe says and write the run folder; returns the summary."""
    s = prepare(recipe)
    acc, run_dir = s.accelerator, recipe.run_dir
    if acc.is_main_process:
        start_run_dir(run_dir, overwrite)
        (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
        (run_dir / "plan.txt").write_text(s.plan.table() + "\n")
        data.save_info(s.bundle, run_dir / "data.json")
        print(s.plan.table(), flush=True)
        print(f"strategy {s.plan.label}: learning {s.plan.learned:,} of {s.plan.total:,} parameters "
              f"({100 * s.plan.fraction:.3g}%)", flush=True)
    acc.wait_for_everyone()
    summary = train_loop(s)
    if acc.is_main_process:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        top5 = "" if summary["val_top5"] is None else f"  val_top5 {summary['val_top5']:.4f}"
        print(f"run folder {run_dir}: val_top1 {summary['val_top1']:.4f}{top5}  learned "
              f"{summary['learned_params']:,}/{summary['total_params']:,} params "
              f"({100 * summary['learned_fraction']:.3g}%)  {summary['train_images_per_second']:.0f} img/s",
              flush=True)
    acc.end_training()
    return summary


def train_loop(s: Setup) -> dict[str, Any]:
    """One readable loop: epochs of accumulated, clipped, scheduled steps; evaluation every epoch."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    recipe, acc, t = s.recipe, s.accelerator, s.recipe.train
    # the optimizer sees learned parameters only (timm skips requires_grad=False, and puts biases and
    # norm weights in a no-weight-decay group)
    optimizer = create_optimizer_v2(s.model, opt=t.opt, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum)
    # fixed slices are identical on every process (seeded); DDP must not broadcast them every step
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        s.model, partial_buffer_names(s.model))
    model, optimizer, train_loader, val_loader = acc.prepare(s.model, optimizer, s.train_loader, s.val_loader)
    updates_per_epoch = max(1, math.ceil(len(train_loader) / t.grad_accum_steps))
    # max_steps, when set, decides the length (the last epoch stops early); else epochs does
    epochs = math.ceil(t.max_steps / updates_per_epoch) if t.max_steps else t.epochs
    scheduler, _ = create_scheduler_v2(optimizer, sched=t.sched, num_epochs=epochs, warmup_epochs=t.warmup_epochs,
                                       min_lr=t.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    learned = [p for p in model.parameters() if p.requires_grad]
    metrics_path = recipe.run_dir / "metrics.jsonl"

    step = images = skipped = 0
    train_seconds = 0.0
    metrics: dict[str, Any] = {}
    for epoch in range(epochs):
        model.train()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True,
                   disable=not (t.progress and acc.is_local_main_process), mininterval=1.0)
        epoch_start, epoch_images, loss_sum, loss_count = time.perf_counter(), 0, 0.0, 0
        for batch in bar:
            if batch is None:  # every image of the batch was unreadable and skipped
                continue
            x, y, bad = batch
            skipped += bad
            with acc.accumulate(model):
                loss = criterion(model(x), y)
                acc.backward(loss)
                if acc.sync_gradients and t.clip_grad:
                    acc.clip_grad_norm_(learned, t.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            epoch_images += x.shape[0] * acc.num_processes
            loss_sum += loss.item()
            loss_count += 1
            if acc.sync_gradients:
                step += 1
                scheduler.step_update(step)
                if step % t.log_every == 0:
                    rate = epoch_images / max(time.perf_counter() - epoch_start, 1e-9)
                    bar.set_postfix(loss=f"{loss_sum / loss_count:.4f}", img_s=f"{rate:.0f}",
                                    lr=f"{optimizer.param_groups[0]['lr']:.2e}")
                if t.max_steps and step >= t.max_steps:
                    break
        bar.close()
        train_seconds += time.perf_counter() - epoch_start
        images += epoch_images
        metrics = evaluate(model, val_loader, acc, len(s.bundle.class_names))
        metrics.update(epoch=epoch + 1, step=step, train_loss=loss_sum / max(loss_count, 1),
                       lr=optimizer.param_groups[0]["lr"], train_seconds=round(train_seconds, 3))
        if acc.is_main_process:
            with metrics_path.open("a") as f:
                f.write(json.dumps(metrics) + "\n")
            top5 = "" if metrics["val_top5"] is None else f"  val_top5 {metrics['val_top5']:.4f}"
            print(f"epoch {epoch + 1}/{epochs}  step {step}  loss {metrics['train_loss']:.4f}  "
                  f"val_top1 {metrics['val_top1']:.4f}{top5}", flush=True)
        if t.max_steps and step >= t.max_steps:
            break

    return {
        "model": recipe.model.name,
        "strategy": s.plan.label,
        "strategy_spec": recipe.strategy,
        "learned_params": s.plan.learned,
        "total_params": s.plan.total,
        "learned_fraction": s.plan.fraction,
        "val_top1": metrics.get("val_top1"),
        "val_top5": metrics.get("val_top5"),
        "val_loss": metrics.get("val_loss"),
        "epochs": metrics.get("epoch", 0),
        "steps": step,
        "train_seconds": round(train_seconds, 3),
        "train_images_per_second": images / train_seconds if train_seconds else 0.0,
        "optimizer_state_bytes": optimizer_state_bytes(optimizer),
        "peak_memory_bytes": peak_memory_bytes(acc.device),
        "skipped_images": skipped,
        "num_processes": acc.num_processes,
        "num_classes": len(s.bundle.class_names),
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in s.data_config.items()},
        "seed": recipe.train.seed,
        "partial_ft_version": __version__,
    }


@torch.no_grad()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, acc: Accelerator,
             num_classes: int) -> dict[str, Any]:
    """Top-1 (and top-5 with >= 5 classes) over the whole split, each sample counted exactly once
    across processes (gather_for_metrics drops the padding of uneven shards)."""
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    per_class_correct = torch.zeros(num_classes, dtype=torch.long)
    per_class_total = torch.zeros(num_classes, dtype=torch.long)
    for batch in loader:
        if batch is None:
            continue
        x, y, _ = batch
        logits = model(x)
        logits, y = acc.gather_for_metrics((logits, y))
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, num_classes), dim=1).indices
        hit1 = top[:, 0] == y
        correct1 += hit1.sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
        total += y.numel()
        per_class_total += torch.bincount(y.cpu(), minlength=num_classes)
        per_class_correct += torch.bincount(y.cpu()[hit1.cpu()], minlength=num_classes)
    return {
        "val_top1": correct1 / max(total, 1),
        "val_top5": correct5 / max(total, 1) if num_classes >= 5 else None,
        "val_loss": loss_sum / max(total, 1),
        "val_samples": total,
        "per_class_top1": (per_class_correct / per_class_total.clamp(min=1)).tolist(),
    }


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's per-parameter state (momentum, Adam moments, ...)."""
    return sum(v.numel() * v.element_size() for state in optimizer.state.values()
               for v in state.values() if torch.is_tensor(v) and v.dim() > 0)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak accelerator memory on GPU; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)
