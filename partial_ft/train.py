"""The training run: recipe -> data, model, strategy plan -> one Accelerate loop -> run folder.

Read it top to bottom: `run()` sets everything up, `train_loop()` is the loop, `evaluate()` measures,
evaluation.py measures (and measures a finished run's delta again: the `eval` command).
"""
from __future__ import annotations

import json
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
from torch import nn
from tqdm.auto import tqdm

from . import __version__, cache, checkpoint, data, loaders, models, preload, signals
from .evaluation import evaluate
from .signals import Interrupted, StopFlag
from .errors import NonFiniteLoss, UserError, did_you_mean, first_line
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
    fingerprint: str  # of the fixed values, taken before any training (they never change)
    cache: cache.Decision  # train from cached features of the fixed prefix, or from images
    preload: str  # what data.preload decided (preload.decide's note)
    preload_seconds: float  # decoding every image (preloaded data)


def prepare(recipe: Recipe) -> Setup:
    """Build data, model and plan; any user mistake surfaces here as a UserError, before any writing."""
    t = recipe.train
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.grad_accum_steps,
        # batches come pinned on a GPU (loaders), so their copies to it need not block
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
        step_scheduler_with_optimizer=False,
    )
    set_seed(t.seed)
    models.check_name(recipe.model.name)  # fail fast, before any data is loaded
    _check_optimization(t)
    with accelerator.main_process_first():  # the first process fills the datasets cache
        bundle = data.load(recipe.data, seed=t.seed)
    model, init_model = models.build(recipe.model, bundle.num_classes, seed=t.seed)
    plan = apply_strategy(model, recipe.strategy, seed=t.seed, init_model=init_model)
    data_config = models.data_config(model, recipe.data)
    deterministic = loaders.transforms(recipe.data, data_config)[2]
    decision = cache.decide(model, t.cache_features, deterministic, tuple(data_config["input_size"]),
                            len(bundle.train) + len(bundle.val))
    batches = (t.batch_size, loaders.eval_batch_size(t.eval_batch_size, t.batch_size, accelerator.device))
    made = preload.make_loaders(bundle, recipe.data, data_config, batches, t.seed, accelerator.device,
                                decision.cut is not None)
    train_loader, val_loader = made.train, made.val
    signals.shield_workers(train_loader, val_loader)  # SIGTERM / Ctrl-C: the loop checkpoints first
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    fixed = checkpoint.fingerprint(model) if accelerator.is_main_process else ""  # the main process saves deltas
    return Setup(recipe, accelerator, bundle, model, plan, data_config, train_loader, val_loader, fixed, decision,
                 made.note, made.seconds)


def _check_optimization(t: Any) -> None:
    """train.opt and train.sched are timm names: try them on a stand-in parameter, so a typo (or a
    scheduler that cannot step per update, like plateau) fails before any work."""
    from timm.optim import create_optimizer_v2, list_optimizers
    from timm.scheduler import create_scheduler_v2

    try:
        opt = create_optimizer_v2(nn.Linear(1, 1), opt=t.opt, lr=t.lr, weight_decay=t.weight_decay,
                                  momentum=t.momentum)
    except Exception as e:
        raise UserError(f"train.opt '{t.opt}': {first_line(e)}{did_you_mean(t.opt, list_optimizers())}") from None
    try:
        create_scheduler_v2(opt, sched=t.sched, num_epochs=max(t.epochs, 2), warmup_epochs=t.warmup_epochs,
                            min_lr=t.min_lr, step_on_epochs=False, updates_per_epoch=1)
    except Exception as e:
        raise UserError(f"train.sched '{t.sched}': {first_line(e)}") from None


def run(recipe: Recipe, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train as the recipe says and write the run folder; returns the summary. With `resume`, continue
    the run in the folder from its last checkpoint. SIGTERM / Ctrl-C checkpoint and raise Interrupted."""
    checkpoint.check_run_dir(recipe, overwrite, resume)  # a bad output path fails before any work (no writes)
    s = prepare(recipe)
    acc, run_dir = s.accelerator, recipe.run_dir
    resume_from = [checkpoint.start_run_dir(recipe, overwrite, resume) if acc.is_main_process else None]
    resume_from = broadcast_object_list(resume_from)[0] if acc.num_processes > 1 else resume_from[0]
    if acc.is_main_process and resume_from is None:  # a fresh start (or a resume with nothing saved yet)
        (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
        (run_dir / "plan.txt").write_text(s.plan.table() + "\n")
        data.save_info(s.bundle, run_dir / "data.json")
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    if acc.is_main_process:
        print(s.plan.table(), flush=True)
        print(f"strategy {s.plan.label}: learning {s.plan.learned:,} of {s.plan.total:,} parameters "
              f"({100 * s.plan.fraction:.3g}%)", flush=True)
        if recipe.data.preload != "false":
            took = f", decoded in {s.preload_seconds:.1f} s" if s.preload_seconds else ""
            print(f"preload: {s.preload}{took}", flush=True)
        if resume_from is not None:
            print(f"resuming from {resume_from}", flush=True)
    acc.wait_for_everyone()
    with signals.stop_on_signals() as stop:
        summary, model = train_loop(s, resume_from, stop)
    if acc.is_main_process:
        delta = checkpoint.save_delta(run_dir / checkpoint.DELTA_NAME, model, recipe, s.bundle.class_names,
                                      s.data_config, s.fingerprint)
        summary["delta_bytes"] = delta.stat().st_size
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        checkpoint.remove_checkpoints(run_dir)  # finished: the delta is what a run keeps
        top5 = "" if summary["val_top5"] is None else f"  val_top5 {summary['val_top5']:.4f}"
        print(f"run folder {run_dir}: val_top1 {summary['val_top1']:.4f}{top5}  learned "
              f"{summary['learned_params']:,}/{summary['total_params']:,} params "
              f"({100 * summary['learned_fraction']:.3g}%)  {summary['train_images_per_second']:.0f} img/s",
              flush=True)
    acc.end_training()
    return summary


@dataclass
class Progress:
    """Where the loop is. Saved with every checkpoint, so a resumed run continues exactly."""

    epoch: int = 0  # the epoch in progress (0-based)
    batches: int = 0  # batches of that epoch already consumed
    step: int = 0  # optimizer updates so far
    images: int = 0
    skipped: int = 0  # unreadable images skipped (data.skip_bad_images)
    nan_skipped: int = 0  # batches skipped for a non-finite loss (train.nan_policy: skip_batch)
    train_seconds: float = 0.0
    epoch_images: int = 0
    epoch_seconds: float = 0.0
    loss_sum: float = 0.0  # this epoch's running loss (its train_loss is the mean)
    loss_count: int = 0
    metrics: dict = field(default_factory=dict)  # the last epoch's metrics
    metrics_lines: int = 0  # lines of metrics.jsonl written (one per finished epoch)
    steady_images: int = 0  # images of steps timed for the steady throughput: the first step of each
    steady_seconds: float = 0.0  # epoch (worker start-up, first batch) and checkpoint writes left out


def train_loop(s: Setup, resume_from: Optional[Path], stop: StopFlag) -> tuple[dict[str, Any], nn.Module]:
    """One readable loop: epochs of accumulated, clipped, scheduled steps; evaluation and a checkpoint
    every epoch, a checkpoint every `checkpoint_every` steps. Returns (summary, trained model)."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    recipe, acc, t = s.recipe, s.accelerator, s.recipe.train
    # what trains: the whole model on images, or (feature cache) the part after the fixed prefix on its
    # cached features; both share the model's parameters
    net, train_data, val_data, cached = s.model, s.train_loader, s.val_loader, None
    if s.cache.cut is not None:
        cached = cache.build(s.cache.cut, s.model, s.train_loader, s.val_loader, t.seed, recipe.data.num_workers,
                             acc, tuple(s.data_config["input_size"]), t.channels_last)
        net, train_data, val_data = cached.suffix, cached.train_loader, cached.val_loader
        if acc.is_main_process:
            i = cached.info
            print(f"feature cache: {s.cache.note}: {i['images']:,} images, {i['bytes'] / 2**20:.1f} MiB, "
                  f"extracted in {i['extract_seconds']:.1f} s", flush=True)
    elif acc.is_main_process and t.cache_features != "off":
        print(f"feature cache: {s.cache.note}", flush=True)
    train_set = train_data.dataset
    # the optimizer sees learned parameters only (timm skips requires_grad=False, and puts biases and
    # norm weights in a no-weight-decay group)
    optimizer = create_optimizer_v2(s.model, opt=t.opt, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum)
    # fixed slices are identical on every process (seeded); DDP must not broadcast them every step
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        net, partial_buffer_names(net))
    model, optimizer, train_loader, val_loader = acc.prepare(net, optimizer, train_data, val_data)
    # compiled here, not through Accelerate's dynamo plugin: that one is process-wide state, set by the
    # first Accelerator. Checkpoints hold the uncompiled model's state, the same with compile on or off.
    forward = torch.compile(model) if t.compile else model
    updates_per_epoch = max(1, math.ceil(len(train_loader) / t.grad_accum_steps))
    # max_steps, when set, decides the length (the last epoch stops early); else epochs does
    epochs = math.ceil(t.max_steps / updates_per_epoch) if t.max_steps else t.epochs
    scheduler, _ = create_scheduler_v2(optimizer, sched=t.sched, num_epochs=epochs, warmup_epochs=t.warmup_epochs,
                                       min_lr=t.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    learned = [p for p in model.parameters() if p.requires_grad]
    metrics_path = recipe.run_dir / "metrics.jsonl"

    p = Progress()
    if resume_from is not None:  # model, optimizer, scheduler, RNG states, and where the loop was
        state = checkpoint.load_checkpoint(acc, resume_from)
        if "scheduler" in state:  # plain data in train_state.json (Accelerate would unpickle it unsafely)
            scheduler.load_state_dict(state.pop("scheduler"))
        p = Progress(**state)
        if acc.is_main_process:  # epochs logged after the checkpoint are run again: drop their lines
            lines = metrics_path.read_text().splitlines(keepends=True) if metrics_path.is_file() else []
            metrics_path.write_text("".join(lines[:p.metrics_lines]))

    def save() -> Path:
        state = {**asdict(p), "scheduler": scheduler.state_dict()}
        return checkpoint.save_checkpoint(acc, recipe.run_dir, state, keep=t.keep_checkpoints)

    def finished() -> bool:
        return p.epoch >= epochs or bool(t.max_steps and p.step >= t.max_steps)

    batches = train_loader
    try:
        while not finished():
            model.train()
            # an epoch's order comes from (seed, epoch) alone (seedable sampler), so a resumed epoch sees the
            # same batches; skip those it already learned from
            train_loader.set_epoch(p.epoch)
            train_set.set_epoch(p.epoch)  # and its augmentation draws (Accelerate sets only the sampler's)
            batches = acc.skip_first_batches(train_loader, p.batches) if p.batches else train_loader
            bar = tqdm(batches, desc=f"epoch {p.epoch + 1}/{epochs}", leave=False, dynamic_ncols=True,
                       disable=not (t.progress and acc.is_local_main_process), mininterval=1.0,
                       initial=p.batches, total=len(train_loader))
            epoch_start = time.perf_counter() - p.epoch_seconds
            step_mark, step_images = None, 0  # when the last step ended; images since
            for batch in bar:
                p.batches += 1
                x, y, bad = batch
                p.skipped += bad
                if x is None:  # every image of the batch was unreadable and skipped
                    continue
                if t.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with acc.accumulate(model):
                    loss = criterion(forward(x), y)
                    if not _all_finite(acc, loss):  # before backward: a NaN must never reach the weights
                        if t.nan_policy == "stop":
                            raise NonFiniteLoss(loss.item(), p.step + 1, p.epoch + 1,
                                                checkpoint.latest(recipe.run_dir))
                        optimizer.zero_grad(set_to_none=True)  # and what this accumulation gathered so far
                        p.nan_skipped += 1
                        continue
                    acc.backward(loss)
                    if acc.sync_gradients and t.clip_grad:
                        acc.clip_grad_norm_(learned, t.clip_grad)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                p.epoch_images += x.shape[0] * acc.num_processes
                step_images += x.shape[0] * acc.num_processes
                p.loss_sum += loss.item()
                p.loss_count += 1
                if not acc.sync_gradients:
                    continue  # checkpoints and stops only fall between whole (accumulated) steps
                p.step += 1
                scheduler.step_update(p.step)
                now = time.perf_counter()
                if step_mark is not None:
                    p.steady_images += step_images
                    p.steady_seconds += now - step_mark
                step_mark, step_images = now, 0
                if p.step % t.log_every == 0:
                    rate = p.epoch_images / max(time.perf_counter() - epoch_start, 1e-9)
                    bar.set_postfix(loss=f"{p.loss_sum / p.loss_count:.4f}", img_s=f"{rate:.0f}",
                                    lr=f"{optimizer.param_groups[0]['lr']:.2e}")
                if t.max_steps and p.step >= t.max_steps:
                    break
                stopping = _stop_requested(acc, stop)
                periodic = t.checkpoint_every and p.step % t.checkpoint_every == 0 and p.batches < len(train_loader)
                if stopping or periodic:  # (the epoch's last batch is followed by the epoch-end checkpoint)
                    p.epoch_seconds = time.perf_counter() - epoch_start
                    folder = save()
                    if stopping:
                        raise Interrupted(stop.signum, p.step, folder)
                    step_mark = time.perf_counter()
            bar.close()
            p.train_seconds += time.perf_counter() - epoch_start
            p.images += p.epoch_images
            p.metrics = evaluate(forward, val_loader, acc, len(s.bundle.class_names))
            p.metrics.update(epoch=p.epoch + 1, step=p.step, train_loss=p.loss_sum / max(p.loss_count, 1),
                             lr=optimizer.param_groups[0]["lr"], train_seconds=round(p.train_seconds, 3))
            if acc.is_main_process:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(p.metrics) + "\n")
                top5 = "" if p.metrics["val_top5"] is None else f"  val_top5 {p.metrics['val_top5']:.4f}"
                print(f"epoch {p.epoch + 1}/{epochs}  step {p.step}  loss {p.metrics['train_loss']:.4f}  "
                      f"val_top1 {p.metrics['val_top1']:.4f}{top5}", flush=True)
            p = Progress(epoch=p.epoch + 1, step=p.step, images=p.images, skipped=p.skipped, metrics=p.metrics,
                         nan_skipped=p.nan_skipped, train_seconds=p.train_seconds,
                         steady_images=p.steady_images, steady_seconds=p.steady_seconds,
                         metrics_lines=p.metrics_lines + 1)
            if not finished():
                folder = save()
                if _stop_requested(acc, stop):
                    raise Interrupted(stop.signum, p.step, folder)

    finally:  # on errors too: persistent workers must not outlive the loop (see loaders.shutdown_workers)
        loaders.shutdown_workers(train_loader, val_loader, batches)

    return summarize(s, p, optimizer, cached.info if cached else None), s.model


def summarize(s: Setup, p: Progress, optimizer: torch.optim.Optimizer,
              feature_cache: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """What summary.json holds: the plan's counts, the last epoch's metrics, throughput and memory.
    train_seconds includes extracting cached features; train_images_per_second is the training steps'
    own, in the steady state (see Progress.steady_images)."""
    recipe, acc, metrics = s.recipe, s.accelerator, p.metrics
    feature_cache = dict(feature_cache) if feature_cache else None
    extract = feature_cache.pop("extract_seconds") if feature_cache else 0.0
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
        "steps": p.step,
        "train_seconds": round(p.train_seconds + extract, 3),
        "train_images_per_second": (p.steady_images / p.steady_seconds if p.steady_seconds else
                                    p.images / p.train_seconds if p.train_seconds else 0.0),
        "optimizer_state_bytes": optimizer_state_bytes(optimizer),
        "peak_memory_bytes": peak_memory_bytes(acc.device),
        "feature_cache": feature_cache,
        "feature_extract_seconds": round(extract, 3),
        "feature_cache_note": s.cache.note,
        "preload": s.preload,
        "skipped_images": p.skipped,
        "nan_skipped_batches": p.nan_skipped,
        "num_processes": acc.num_processes,
        "num_classes": len(s.bundle.class_names),
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in s.data_config.items()},
        "seed": recipe.train.seed,
        "partial_ft_version": __version__,
    }


def _all_finite(acc: Accelerator, loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process: all must stop (or skip) together."""
    bad = (~torch.isfinite(loss.detach())).reshape(1).to(torch.int32)
    if acc.num_processes > 1:
        bad = acc.reduce(bad, reduction="sum")
    return int(bad.item()) == 0


def _stop_requested(acc: Accelerator, stop: StopFlag) -> bool:
    """Whether any process got SIGTERM / Ctrl-C: all processes must stop (and checkpoint) together."""
    if acc.num_processes == 1:
        return stop.signum is not None
    flag = torch.tensor([stop.signum or 0], device=acc.device)
    signum = int(acc.reduce(flag, reduction="max").item())
    stop.signum = stop.signum or (signum or None)
    return signum != 0


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
