"""The training run: recipe -> setup (prepare.py: data, model, strategy plan, loaders) -> one Accelerate
loop -> run folder.

Read it top to bottom: `run()` is the driver, `train()` the epochs, `train_one_epoch()` the loop over one
epoch's batches, `train_step()` one step. Measuring lives in evaluation.py, the run folder in rundir.py,
what a run keeps in delta.py, what summary.json holds in summary.py.
"""
from __future__ import annotations

import math
import signal
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from accelerate import Accelerator
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from tqdm.auto import tqdm

from . import cache, checkpoints, collective, loaders, probe, report, tracking
from .errors import NonFiniteLoss
from .evaluation import evaluate
from .extras import Extras
from .partial import partial_buffer_names
from .prepare import Setup, prepare
from .progress import Progress, optimizer_state_bytes
from .recipe import Recipe
from .rundir import RunFolder
from .sections import TrainCfg
from .signals import Interrupted, StopFlag, Stopped, deferred, stop_on_signals
from .strategies import silent_norms
from .summary import Trained, finish
from .validate import validate

EpochHook = Callable[[dict[str, Any]], bool]  # gets an epoch's metrics line; True asks the run to stop


def run(recipe: Recipe, overwrite: bool = False, resume: bool = False,
        on_epoch_end: Optional[EpochHook] = None) -> dict[str, Any]:
    """Train as the recipe says and write the run folder; returns the summary. With `resume`, continue
    the run in the folder from its last checkpoint. SIGTERM / Ctrl-C checkpoint and raise Interrupted.
    `on_epoch_end(metrics)` is called after each epoch's evaluation; when it returns True the run stops
    as on SIGTERM (a checkpoint, then Interrupted): a sweep's pruner stops a losing candidate this way."""
    last = validate(recipe, overwrite, resume)  # a mistake, or a bad or busy output path: before any work
    setup = prepare(recipe, resuming=last is not None)  # resuming: no new scoring pass
    acc = setup.accelerator
    folder = RunFolder(recipe.run_dir, main=acc.is_main_process)
    try:
        started = folder.start(recipe, overwrite, resume, setup.bundle.info, setup.plan) if folder.main else None
        resume_from = collective.from_main(acc, started)
        acc.wait_for_everyone()
        tracking.start(acc, recipe.name, recipe.to_dict())  # inside the run folder: it exists now
        preload = setup.preload if recipe.data.preload != "false" else None
        acc.print(report.plan_lines(setup.plan, preload, setup.preload_seconds, resume_from), flush=True)
        warning = report.silent_norms_warning(silent_norms(setup.model))
        if warning and acc.is_main_process:
            print(warning, file=sys.stderr, flush=True)
        with stop_on_signals() as stop:
            trained, model = train(setup, folder, resume_from, stop, on_epoch_end)
        with deferred():  # finishing is one step: a signal now waits until it is done
            summary = finish(setup, folder, trained, model)
            folder.release()
    except (Interrupted, Stopped):
        raise  # stopped with a checkpoint (or before any): --resume continues this run
    except BaseException:
        folder.abandon()  # an --overwrite brings the old run back
        raise
    finally:
        folder.release()
    acc.end_training()
    acc.print(report.summary_line(folder.path, summary), flush=True)
    return summary


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
    extras: Extras  # mixup / cutmix, the EMA, the best epoch kept (each as the recipe asks)

    def finished(self, progress: Progress) -> bool:
        return progress.epoch >= self.epochs or bool(self.train.max_steps and progress.step >= self.train.max_steps)

    def save(self, progress: Progress) -> Path:
        """A resumable checkpoint of where the loop is (every process calls this)."""
        state = {**asdict(progress), "scheduler": self.scheduler.state_dict(), "extras": self.extras.state()}
        return checkpoints.save(self.accelerator, self.folder.path, state, keep=self.train.keep_checkpoints,
                                tensors=self.extras.tensors())

    def base_lr(self) -> float:
        """The scheduled lr (layer-wise decay scales it per parameter group by the group's `lr_scale`)."""
        group = self.optimizer.param_groups[0]
        return group["lr"] / group.get("lr_scale", 1.0)


def make_optimizer(model: nn.Module, cfg: TrainCfg) -> torch.optim.Optimizer:
    """timm's optimizer over the learned parameters only (it skips requires_grad=False, and puts biases
    and norm weights in a no-weight-decay group). With train.layer_decay, timm's layer-wise groups: each
    carries an lr_scale that timm's schedulers apply, layer_decay^(layers above it), counted over the
    network's layers whether they learn or not, so a learned block's lr follows its depth in the network."""
    return create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                               layer_decay=cfg.layer_decay)


def _build_loop(setup: Setup, folder: RunFolder, stop: StopFlag) -> tuple[Loop, Optional[cache.Cached]]:
    """Optimizer, scheduler and loaders over what trains: the whole model on images, or (feature cache)
    the part after the fixed prefix on its cached features; both share the model's parameters."""
    acc, cfg = setup.accelerator, setup.recipe.train
    optimizer = make_optimizer(setup.model, cfg)  # over the model's learned parameters, which a cached suffix shares
    net, train_data, val_data, cached = setup.model, setup.train_loader, setup.val_loader, None
    if setup.cache.cut is not None:
        cached = cache.build(setup.cache.cut, setup.model, setup.train_loader, setup.val_loader, cfg.seed,
                             setup.recipe.data.num_workers, acc, tuple(setup.data_config["input_size"]),
                             cfg.channels_last)
        net, train_data, val_data = cached.suffix, cached.train_loader, cached.val_loader
        i = cached.info
        acc.print(f"feature cache: {setup.cache.note}: {i['images']:,} images, {i['bytes'] / 2**20:.1f} MiB, "
                  f"extracted in {i['extract_seconds']:.1f} s", flush=True)
    elif cfg.cache_features != "off":
        acc.print(f"feature cache: {setup.cache.note}", flush=True)
    # fixed slices are identical on every process (seeded); DDP must not broadcast them every step
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        net, partial_buffer_names(net))
    model, optimizer, train_loader, val_loader = acc.prepare(net, optimizer, train_data, val_data)
    # compiled here, not through Accelerate's dynamo plugin: that one is process-wide state, set by the
    # first Accelerator. Checkpoints hold the uncompiled model's state, the same with compile on or off.
    forward = torch.compile(model) if cfg.compile else model
    updates_per_epoch = max(1, math.ceil(len(train_loader) / cfg.grad_accum_steps))
    # max_steps, when set, decides the length (the last epoch stops early); else epochs does
    epochs = math.ceil(cfg.max_steps / updates_per_epoch) if cfg.max_steps else cfg.epochs
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=epochs, warmup_epochs=cfg.warmup_epochs,
                                       min_lr=cfg.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    learned = [w for w in model.parameters() if w.requires_grad]
    extras = Extras(setup.recipe, setup.model, len(setup.bundle.class_names))  # after prepare: on its device
    loop = Loop(acc, cfg, folder, model, forward, optimizer, scheduler, train_loader, val_loader, extras.criterion,
                learned, epochs, len(setup.bundle.class_names), stop, extras)
    return loop, cached


def train(setup: Setup, folder: RunFolder, resume_from: Optional[Path], stop: StopFlag,
          on_epoch_end: Optional[EpochHook] = None) -> tuple[Trained, nn.Module]:
    """The driver: epochs of training, each followed by evaluation and a checkpoint. Returns (what the
    summary needs, trained model)."""
    loop, cached = _build_loop(setup, folder, stop)
    acc, progress, batches = setup.accelerator, Progress(), loop.train_loader
    try:
        if setup.solver == "exact":  # a convex problem: solved to convergence on the cached features, no epochs
            progress.solver = probe.train_exact(cached, loop.num_classes, loop.train.seed, acc)  # (no checkpoints)
            progress.loss_sum, progress.loss_count = progress.solver["train_loss"], 1  # (its time: the epoch meter's)
            loop.epochs = 1
            end_of_epoch(loop, progress)
        elif resume_from is not None:  # model, optimizer, scheduler, RNG states, and where the loop was
            state = checkpoints.load(acc, resume_from)
            per_epoch, t = len(loop.train_loader), loop.train  # a position past this recipe's end is refused
            total = loop.epochs * max(1, math.ceil(per_epoch / t.grad_accum_steps))
            checkpoints.check_position(state, resume_from, loop.epochs, per_epoch, min(total, t.max_steps or total),
                                       {f.name for f in fields(Progress)} | {"scheduler", "extras"})
            loop.scheduler.load_state_dict(state.pop("scheduler"))  # plain data (Accelerate would unpickle it)
            loop.extras.load(state.pop("extras", None), checkpoints.load_tensors(resume_from))
            progress = Progress(**state)
            if acc.is_main_process:
                folder.keep_metrics(progress.metrics_lines)
        while setup.solver == "loop" and not loop.finished(progress):
            batches = train_one_epoch(loop, progress)
            end_of_epoch(loop, progress)
            if on_epoch_end is not None and on_epoch_end(progress.metrics):
                stop.signum = signal.SIGTERM  # stopped as a scheduler stops it: checkpoint, Interrupted
            progress = progress.next_epoch()
            if not loop.finished(progress):
                saved = loop.save(progress)
                if collective.stop_requested(acc, stop):
                    raise Interrupted(stop.signum, progress.step, saved)
    finally:  # on errors too: persistent workers must not outlive the loop (see loaders.shutdown_workers)
        loaders.shutdown_workers(loop.train_loader, loop.val_loader, batches)
    kept = loop.extras.finish()  # the averaged values, the best epoch's: what the run keeps
    return Trained(progress, optimizer_state_bytes(loop.optimizer), cached.info if cached else None, kept), setup.model


def train_one_epoch(loop: Loop, progress: Progress) -> Any:
    """One epoch of accumulated, clipped, scheduled steps (resuming mid-epoch where `progress` says); a checkpoint
    every `checkpoint_every` steps and on SIGTERM / Ctrl-C. Returns the batch iterator it used."""
    acc, cfg = loop.accelerator, loop.train
    loop.model.train()
    # an epoch's order comes from (seed, epoch) alone (seedable sampler), so a resumed epoch sees the same
    # batches; skip those it already learned from. The dataset gets the epoch for its augmentation draws
    loop.train_loader.set_epoch(progress.epoch)
    loop.train_loader.dataset.set_epoch(progress.epoch)
    batches = acc.skip_first_batches(loop.train_loader, progress.batches) if progress.batches else loop.train_loader
    bar = tqdm(batches, desc=f"epoch {progress.epoch + 1}/{loop.epochs}", leave=False, dynamic_ncols=True,
               disable=not (cfg.progress and acc.is_local_main_process), mininterval=1.0,
               initial=progress.batches, total=len(loop.train_loader))
    progress.meter.start_epoch()
    for x, y, bad in bar:
        progress.batches += 1
        progress.skipped += bad
        if x is None:  # every image of the batch was unreadable and skipped
            continue
        if collective.lone_image(acc, loop.model, x):
            progress.dropped_images += x.shape[0]
            continue
        if not train_step(loop, progress, x, y):
            continue  # a skipped non-finite batch, or inside an accumulation
        if progress.step % cfg.log_every == 0:
            lr = loop.base_lr()
            rate = progress.meter.epoch_rate()
            bar.set_postfix(loss=f"{progress.loss_sum / progress.loss_count:.4f}", img_s=f"{rate:.0f}", lr=f"{lr:.2e}")
            tracking.log(acc, {"loss": progress.log_point(), "lr": lr, "images_per_second": rate}, progress.step)
        if cfg.max_steps and progress.step >= cfg.max_steps:
            break
        stopping = collective.stop_requested(acc, loop.stop)
        periodic = cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0 and \
            progress.batches < len(loop.train_loader)
        if stopping or periodic:  # (the epoch's last batch is followed by the epoch-end checkpoint)
            progress.meter.pause()
            saved = loop.save(progress)
            if stopping:
                raise Interrupted(loop.stop.signum, progress.step, saved)
            progress.meter.resume()
    bar.close()
    return batches


def train_step(loop: Loop, progress: Progress, x: torch.Tensor, y: torch.Tensor) -> bool:
    """Forward, backward and (at the end of an accumulation) an optimizer step; True when a step was
    taken. A non-finite loss never reaches the weights: it stops the run or skips the batch."""
    acc, cfg = loop.accelerator, loop.train
    x, y = loop.extras.mix(x, y)  # (before the layout change: mixing concatenates)
    if cfg.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with acc.accumulate(loop.model):
        loss = loop.criterion(loop.forward(x), y)
        if not collective.all_finite(acc, loss):  # before backward
            if cfg.nan_policy == "stop":
                last = checkpoints.latest(loop.folder.path)
                raise NonFiniteLoss(loss.item(), progress.step + 1, progress.epoch + 1, last)
            loop.optimizer.zero_grad(set_to_none=True)  # and what this accumulation gathered so far
            progress.nan_skipped += 1
            return False
        acc.backward(loss)
        if acc.sync_gradients and cfg.clip_grad:
            acc.clip_grad_norm_(loop.learned, cfg.clip_grad)
        loop.optimizer.step()
        loop.optimizer.zero_grad(set_to_none=True)
    progress.record_batch(x.shape[0] * acc.num_processes, loss.item())
    if not acc.sync_gradients:
        return False  # checkpoints and stops only fall between whole (accumulated) steps
    progress.step += 1
    loop.extras.stepped(progress.step)
    loop.scheduler.step_update(progress.step)
    progress.meter.step()
    return True


def end_of_epoch(loop: Loop, progress: Progress) -> None:
    """Close the epoch's books, measure on the validation split, log a metrics line."""
    acc = loop.accelerator
    progress.close_epoch()
    with loop.extras.kept_values():  # measure what the run would keep
        progress.metrics = evaluate(loop.forward, loop.val_loader, acc, loop.num_classes)
        progress.metrics.update(epoch=progress.epoch + 1, step=progress.step,
                                train_loss=progress.loss_sum / max(progress.loss_count, 1),
                                lr=loop.base_lr(), train_seconds=round(progress.train_seconds, 3),
                                loss_curve=progress.losses)
        loop.extras.offer(progress.metrics)
    tracking.log(acc, {k: v for k, v in progress.metrics.items() if k != "per_class_top1"}, progress.step)
    if acc.is_main_process:
        loop.folder.append_metrics(progress.metrics)
    acc.print(report.epoch_line(progress.epoch + 1, loop.epochs, progress.step, progress.metrics,
                                progress.solver["solver"] == "exact"), flush=True)
