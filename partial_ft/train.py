"""The training run: recipe -> setup (prepare.py: data, model, strategy plan, loaders) -> one Accelerate
loop -> run folder.

Read it top to bottom: `run()` is the driver, `train()` the epochs, `train_one_epoch()` the loop over one
epoch's batches, `train_step()` one step. Measuring lives in evaluation.py, the run folder in rundir.py,
what a run keeps in delta.py, what summary.json holds in summary.py.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from tqdm.auto import tqdm

from . import cache, collective, loaders, probe, tracking
from .errors import NonFiniteLoss
from .evaluation import evaluate
from .partial import partial_buffer_names
from .prepare import Setup, prepare
from .progress import Progress, optimizer_state_bytes
from .recipe import Recipe, TrainCfg
from .rundir import RunFolder, read_strategy
from .signals import Interrupted, StopFlag, stop_on_signals
from .summary import Trained, summarize
from .validate import validate


def run(recipe: Recipe, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train as the recipe says and write the run folder; returns the summary. With `resume`, continue
    the run in the folder from its last checkpoint. SIGTERM / Ctrl-C checkpoint and raise Interrupted."""
    last = validate(recipe, overwrite, resume)  # a mistake, or a bad or busy output path: before any work
    recorded = read_strategy(recipe.run_dir) if last is not None else None  # resuming: no new scoring pass
    setup = prepare(recipe, recorded["strategy"] if recorded else None)
    if recorded:
        setup.plan.scoring_seconds = recorded["scoring_seconds"]
    acc = setup.accelerator
    folder = RunFolder(recipe.run_dir, main=acc.is_main_process)
    try:
        resume_from = [folder.start(recipe, overwrite, resume, setup.bundle.info) if acc.is_main_process else None]
        resume_from = broadcast_object_list(resume_from)[0] if acc.num_processes > 1 else resume_from[0]
        if acc.is_main_process and resume_from is None:  # a fresh start (or a resume with nothing saved yet)
            folder.write_start(recipe, setup.plan.table(), setup.bundle.info, setup.plan.spec,
                               setup.plan.scoring_seconds)
        _print_plan(setup, resume_from)
        acc.wait_for_everyone()
        tracking.start(acc, recipe.name, recipe.to_dict())  # inside the run folder: it exists now
        with stop_on_signals() as stop:
            trained, model = train(setup, folder, resume_from, stop)
        delta_bytes = None
        if acc.is_main_process:
            path = folder.save_delta(model, recipe, setup.bundle.class_names, setup.data_config, setup.fingerprint,
                                     {"strategy": setup.plan.spec})  # data-driven choices resolved: no data to load
            delta_bytes = path.stat().st_size
        summary = summarize(setup, trained, delta_bytes)
        if acc.is_main_process:
            folder.finish(summary, f"{recipe.model.name}, {setup.plan.label}")
        _print_summary(acc, folder.path, summary)
    finally:
        folder.release()
    acc.end_training()
    return summary


def _print_plan(setup: Setup, resume_from: Optional[Path]) -> None:
    plan, say = setup.plan, setup.accelerator.print
    say(plan.table(), flush=True)
    scoring = f"; scoring pass {plan.scoring_seconds:.1f} s" if plan.scoring_seconds else ""
    say(f"strategy {plan.label}: learning {plan.learned:,} of {plan.total:,} parameters "
        f"({100 * plan.fraction:.3g}%){scoring}", flush=True)
    if setup.recipe.data.preload != "false":
        took = f", decoded in {setup.preload_seconds:.1f} s" if setup.preload_seconds else ""
        say(f"preload: {setup.preload}{took}", flush=True)
    if resume_from is not None:
        say(f"resuming from {resume_from}", flush=True)


def _print_summary(acc: Accelerator, run_dir: Path, summary: dict[str, Any]) -> None:
    top5 = "" if summary["val_top5"] is None else f"  val_top5 {summary['val_top5']:.4f}"
    acc.print(f"run folder {run_dir}: val_top1 {summary['val_top1']:.4f}{top5}  learned "
              f"{summary['learned_params']:,}/{summary['total_params']:,} params "
              f"({100 * summary['learned_fraction']:.3g}%)  {summary['train_images_per_second']:.0f} img/s",
              flush=True)


@dataclass
class Loop:
    """The prepared objects the epochs share (after Accelerate's prepare)."""

    accelerator: Accelerator
    train: TrainCfg  # the recipe's train section
    folder: RunFolder
    model: nn.Module  # what the optimizer trains: the whole model, or the part after a cached prefix
    forward: Any  # the model, or its torch.compile'd version
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    val_loader: Any
    criterion: nn.Module
    learned: list[nn.Parameter]
    epochs: int
    num_classes: int
    stop: StopFlag

    def finished(self, p: Progress) -> bool:
        return p.epoch >= self.epochs or bool(self.train.max_steps and p.step >= self.train.max_steps)

    def save(self, p: Progress) -> Path:
        """A resumable checkpoint of where the loop is (every process calls this)."""
        return self.folder.save_checkpoint(self.accelerator, {**asdict(p), "scheduler": self.scheduler.state_dict()},
                                           keep=self.train.keep_checkpoints)


def _build_loop(setup: Setup, folder: RunFolder, stop: StopFlag) -> tuple[Loop, Optional[cache.Cached]]:
    """Optimizer, scheduler and loaders over what trains: the whole model on images, or (feature cache)
    the part after the fixed prefix on its cached features; both share the model's parameters."""
    acc, t = setup.accelerator, setup.recipe.train
    net, train_data, val_data, cached = setup.model, setup.train_loader, setup.val_loader, None
    if setup.cache.cut is not None:
        cached = cache.build(setup.cache.cut, setup.model, setup.train_loader, setup.val_loader, t.seed,
                             setup.recipe.data.num_workers, acc, tuple(setup.data_config["input_size"]),
                             t.channels_last)
        net, train_data, val_data = cached.suffix, cached.train_loader, cached.val_loader
        i = cached.info
        acc.print(f"feature cache: {setup.cache.note}: {i['images']:,} images, {i['bytes'] / 2**20:.1f} MiB, "
                  f"extracted in {i['extract_seconds']:.1f} s", flush=True)
    elif t.cache_features != "off":
        acc.print(f"feature cache: {setup.cache.note}", flush=True)
    # the optimizer sees learned parameters only (timm skips requires_grad=False, and puts biases and
    # norm weights in a no-weight-decay group)
    optimizer = create_optimizer_v2(setup.model, opt=t.opt, lr=t.lr, weight_decay=t.weight_decay,
                                    momentum=t.momentum)
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
    learned = [p for p in model.parameters() if p.requires_grad]
    loop = Loop(acc, t, folder, model, forward, optimizer, scheduler, train_loader, val_loader,
                nn.CrossEntropyLoss(label_smoothing=t.label_smoothing), learned, epochs,
                len(setup.bundle.class_names), stop)
    return loop, cached


def train(setup: Setup, folder: RunFolder, resume_from: Optional[Path], stop: StopFlag) -> tuple[Trained, nn.Module]:
    """The driver: epochs of training, each followed by evaluation and a checkpoint. Returns (what the
    summary needs, trained model)."""
    loop, cached = _build_loop(setup, folder, stop)
    acc, p = setup.accelerator, Progress()
    if resume_from is not None:  # model, optimizer, scheduler, RNG states, and where the loop was
        state = folder.load_checkpoint(acc, resume_from)
        loop.scheduler.load_state_dict(state.pop("scheduler"))  # plain data (Accelerate would unpickle it)
        p = Progress(**state)
        if acc.is_main_process:
            folder.keep_metrics(p.metrics_lines)
    batches = loop.train_loader
    try:
        if setup.solver == "exact":  # a convex problem: solved to convergence on the cached features, no epochs
            p.solver = probe.train_exact(cached, loop.num_classes, loop.train.seed, acc)
            p.loss_sum, p.loss_count = p.solver["train_loss"], 1  # (its time: the epoch meter's)
            loop.epochs = 1
            end_of_epoch(loop, p)
        while setup.solver == "loop" and not loop.finished(p):
            batches = train_one_epoch(loop, p)
            end_of_epoch(loop, p)
            p = p.next_epoch()
            if not loop.finished(p):
                saved = loop.save(p)
                if collective.stop_requested(acc, stop):
                    raise Interrupted(stop.signum, p.step, saved)
    finally:  # on errors too: persistent workers must not outlive the loop (see loaders.shutdown_workers)
        loaders.shutdown_workers(loop.train_loader, loop.val_loader, batches)
    return Trained(p, optimizer_state_bytes(loop.optimizer), cached.info if cached else None), setup.model


def train_one_epoch(loop: Loop, p: Progress) -> Any:
    """One epoch of accumulated, clipped, scheduled steps (resuming mid-epoch where `p` says); a checkpoint
    every `checkpoint_every` steps and on SIGTERM / Ctrl-C. Returns the batch iterator it used."""
    acc, t = loop.accelerator, loop.train
    loop.model.train()
    # an epoch's order comes from (seed, epoch) alone (seedable sampler), so a resumed epoch sees the same
    # batches; skip those it already learned from. The dataset gets the epoch for its augmentation draws
    loop.train_loader.set_epoch(p.epoch)
    loop.train_loader.dataset.set_epoch(p.epoch)
    batches = acc.skip_first_batches(loop.train_loader, p.batches) if p.batches else loop.train_loader
    bar = tqdm(batches, desc=f"epoch {p.epoch + 1}/{loop.epochs}", leave=False, dynamic_ncols=True,
               disable=not (t.progress and acc.is_local_main_process), mininterval=1.0,
               initial=p.batches, total=len(loop.train_loader))
    p.meter.start_epoch()
    for x, y, bad in bar:
        p.batches += 1
        p.skipped += bad
        if x is None:  # every image of the batch was unreadable and skipped
            continue
        if collective.lone_image(acc, loop.model, x):
            p.dropped_images += x.shape[0]
            continue
        if not train_step(loop, p, x, y):
            continue  # a skipped non-finite batch, or inside an accumulation
        if p.step % t.log_every == 0:
            lr = loop.optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{p.loss_sum / p.loss_count:.4f}", img_s=f"{p.meter.epoch_rate():.0f}", lr=f"{lr:.2e}")
            tracking.log(acc, {"loss": p.log_point(), "lr": lr, "images_per_second": p.meter.epoch_rate()}, p.step)
        if t.max_steps and p.step >= t.max_steps:
            break
        stopping = collective.stop_requested(acc, loop.stop)
        periodic = t.checkpoint_every and p.step % t.checkpoint_every == 0 and p.batches < len(loop.train_loader)
        if stopping or periodic:  # (the epoch's last batch is followed by the epoch-end checkpoint)
            p.meter.pause()
            saved = loop.save(p)
            if stopping:
                raise Interrupted(loop.stop.signum, p.step, saved)
            p.meter.resume()
    bar.close()
    return batches


def train_step(loop: Loop, p: Progress, x: torch.Tensor, y: torch.Tensor) -> bool:
    """Forward, backward and (at the end of an accumulation) an optimizer step; True when a step was
    taken. A non-finite loss never reaches the weights: it stops the run or skips the batch."""
    acc, t = loop.accelerator, loop.train
    if t.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with acc.accumulate(loop.model):
        loss = loop.criterion(loop.forward(x), y)
        if not collective.all_finite(acc, loss):  # before backward
            if t.nan_policy == "stop":
                raise NonFiniteLoss(loss.item(), p.step + 1, p.epoch + 1, loop.folder.latest())
            loop.optimizer.zero_grad(set_to_none=True)  # and what this accumulation gathered so far
            p.nan_skipped += 1
            return False
        acc.backward(loss)
        if acc.sync_gradients and t.clip_grad:
            acc.clip_grad_norm_(loop.learned, t.clip_grad)
        loop.optimizer.step()
        loop.optimizer.zero_grad(set_to_none=True)
    p.record_batch(x.shape[0] * acc.num_processes, loss.item())
    if not acc.sync_gradients:
        return False  # checkpoints and stops only fall between whole (accumulated) steps
    p.step += 1
    loop.scheduler.step_update(p.step)
    p.meter.step()
    return True


def end_of_epoch(loop: Loop, p: Progress) -> None:
    """Close the epoch's books, measure on the validation split, log a metrics line."""
    acc = loop.accelerator
    p.close_epoch()
    p.metrics = evaluate(loop.forward, loop.val_loader, acc, loop.num_classes)
    p.metrics.update(epoch=p.epoch + 1, step=p.step, train_loss=p.loss_sum / max(p.loss_count, 1),
                     lr=loop.optimizer.param_groups[0]["lr"], train_seconds=round(p.train_seconds, 3),
                     loss_curve=p.losses)
    tracking.log(acc, {k: v for k, v in p.metrics.items() if k != "per_class_top1"}, p.step)
    if acc.is_main_process:
        loop.folder.append_metrics(p.metrics)
    m = p.metrics
    top5 = "" if m["val_top5"] is None else f"  val_top5 {m['val_top5']:.4f}"
    acc.print(f"epoch {p.epoch + 1}/{loop.epochs}  step {p.step}  loss {m['train_loss']:.4f}  "
              f"val_top1 {m['val_top1']:.4f}{top5}", flush=True)
