"""The training run: recipe -> data, model, strategy plan -> one Accelerate loop -> run folder.

Read it top to bottom: `prepare()` builds and validates everything before the run folder is touched,
`run()` is the driver, `train_one_epoch()` the loop over one epoch's batches. Measuring lives in
evaluation.py, the run folder in rundir.py, what a run keeps in delta.py.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from tqdm.auto import tqdm

from . import cache, collective, data, delta, gradients, loaders, mixing, models, preload, probe, signals, tracking, validate
from .errors import NonFiniteLoss
from .evaluation import evaluate
from .partial import partial_buffer_names
from .progress import Progress, summarize
from .extras import Extras
from .recipe import Recipe, loop_features
from .rundir import RunFolder, check, read_strategy
from .signals import Interrupted, StopFlag
from .strategies import Plan, apply_strategy, silent_norms


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
    base: dict[str, str]  # fingerprint parts of the fixed values, taken before any training (they never change)
    cache: cache.Decision  # train from cached features of the fixed prefix, or from images
    preload: str  # what data.preload decided (preload.decide's note)
    preload_seconds: float  # decoding every image (preloaded data)
    solver: str  # 'exact' (a cached linear head solved to convergence, probe.py) or 'loop'


def prepare(recipe: Recipe, strategy: Any = None) -> Setup:
    """Build data, model and plan; any user mistake surfaces here as a UserError, before any writing.
    `strategy`, when given, replaces the recipe's: the resolved one a run folder recorded."""
    t = recipe.train
    tracking.check(t.log_with)  # a tracker that is not installed fails before any work
    accelerator = Accelerator(
        **tracking.accelerator_kwargs(t.log_with, recipe.run_dir),
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.grad_accum_steps,
        # batches come pinned on a GPU (loaders), so their copies to it need not block
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
        step_scheduler_with_optimizer=False,
    )
    set_seed(t.seed)
    models.check_name(recipe.model.name)  # fail fast, before any data is loaded
    validate.check_optimization(t)
    with accelerator.main_process_first():  # the first process fills the datasets cache
        bundle = data.load(recipe.data, seed=t.seed)
    model, init_model = models.build(recipe.model, bundle.num_classes, seed=t.seed)
    data_config = models.data_config(model, recipe.data)
    validate.build_transforms(recipe.data, data_config)
    validate.probe_forward(model, recipe.model.name, tuple(data_config["input_size"]))
    deterministic = loaders.transforms(recipe.data, data_config)[2]
    # strategies that choose from the gradient signal draw it here, before any optimizer exists, through a
    # plain loader of their own; a resumed run (`strategy` recorded in its folder) rebuilds their choice
    # without drawing anything
    scoring_loader, _ = loaders.train_loader(bundle, recipe.data, data_config, t.batch_size, t.seed,
                                             accelerator.device.type == "cuda")
    source = gradients.from_loader(scoring_loader, accelerator, nn.CrossEntropyLoss(label_smoothing=t.label_smoothing),
                                   t.seed, t.channels_last)
    with signals.stop_on_signals():
        plan = apply_strategy(model, recipe.strategy if strategy is None else strategy, seed=t.seed,
                              init_model=init_model, gradients=source)
    decision = cache.Decision(None, "not used: data.mixup / data.cutmix mix images") if mixing.mixes(recipe.data) \
        else cache.decide(model, t.cache_features, deterministic, tuple(data_config["input_size"]),
                          len(bundle.train) + len(bundle.val))
    batches = (t.batch_size, loaders.eval_batch_size(t.eval_batch_size, t.batch_size, accelerator.device))
    made = preload.make_loaders(bundle, recipe.data, data_config, batches, t.seed, accelerator.device,
                                decision.cut is not None)  # auto: not for what the cache reads once anyway
    signals.shield_workers(made.train, made.val)  # SIGTERM / Ctrl-C: the loop checkpoints first
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    base = delta.fingerprint_parts(model) if accelerator.is_main_process else {}  # the main process saves deltas
    return Setup(recipe, accelerator, bundle, model, plan, data_config, made.train, made.val, base, decision,
                 made.note, made.seconds, "loop" if loop_features(recipe) else probe.choose(t.solver, decision.cut))


def run(recipe: Recipe, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train as the recipe says and write the run folder; returns the summary. With `resume`, continue
    the run in the folder from its last checkpoint. SIGTERM / Ctrl-C checkpoint and raise Interrupted."""
    last = check(recipe, overwrite, resume)  # a bad or busy output path fails before any work (no writes)
    recorded = read_strategy(recipe.run_dir) if last is not None else None  # resuming: no new scoring pass
    s = prepare(recipe, recorded["strategy"] if recorded else None)
    if recorded:
        s.plan.scoring_seconds = recorded["scoring_seconds"]
    acc = s.accelerator
    folder = RunFolder(recipe.run_dir, main=acc.is_main_process)
    try:
        resume_from = [folder.start(recipe, overwrite, resume, s.bundle.info) if acc.is_main_process else None]
        resume_from = broadcast_object_list(resume_from)[0] if acc.num_processes > 1 else resume_from[0]
        if acc.is_main_process:
            if resume_from is None:  # a fresh start (or a resume with nothing saved yet)
                folder.write_start(recipe, s.plan.table(), s.bundle.info, s.plan.spec, s.plan.scoring_seconds)
            _print_plan(s, resume_from)
        acc.wait_for_everyone()
        tracking.start(acc, recipe.name, recipe.to_dict())  # inside the run folder: it exists now
        with signals.stop_on_signals() as stop:
            summary, model = train(s, folder, resume_from, stop)
        if acc.is_main_process:
            path = folder.save_delta(model, recipe, s.bundle.class_names, s.data_config, s.base,
                                     {"strategy": s.plan.spec})  # data-driven choices resolved: no data to load
            summary["delta_bytes"] = path.stat().st_size
            folder.finish(summary, f"{recipe.model.name}, {s.plan.label}")
            _print_summary(folder.path, summary)
    finally:
        folder.release()
    acc.end_training()
    return summary


def _print_plan(s: Setup, resume_from: Optional[Path]) -> None:
    plan = s.plan
    print(plan.table(), flush=True)
    scoring = f"; scoring pass {plan.scoring_seconds:.1f} s" if plan.scoring_seconds else ""
    print(f"strategy {plan.label}: learning {plan.learned:,} of {plan.total:,} parameters "
          f"({100 * plan.fraction:.3g}%){scoring}", flush=True)
    silent = silent_norms(s.model)
    if silent:
        print(f"warning: {len(silent)} normalisation layers ({', '.join(silent[:3])}{', ...' * (len(silent) > 3)}) "
              "have a zero scale that stays fixed, so the residual branches they end output nothing and never "
              "learn (timm's zero_init_last at random init); learn them (strategy.norm=true) or pass "
              "model.kwargs.zero_init_last=false", file=sys.stderr, flush=True)
    if s.recipe.data.preload != "false":
        took = f", decoded in {s.preload_seconds:.1f} s" if s.preload_seconds else ""
        print(f"preload: {s.preload}{took}", flush=True)
    if resume_from is not None:
        print(f"resuming from {resume_from}", flush=True)


def _print_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    top5 = "" if summary["val_top5"] is None else f"  val_top5 {summary['val_top5']:.4f}"
    print(f"run folder {run_dir}: val_top1 {summary['val_top1']:.4f}{top5}  learned "
          f"{summary['learned_params']:,}/{summary['total_params']:,} params "
          f"({100 * summary['learned_fraction']:.3g}%)  {_speed(summary)}", flush=True)


def _speed(summary: dict[str, Any]) -> str:
    if summary.get("solver", {}).get("solver") == "exact":  # no steps: the solve's time is the number
        return f"solved in {summary['solver']['seconds']:.1f} s"
    return f"{summary['train_images_per_second']:.0f} img/s"


@dataclass
class Loop:
    """The prepared objects the epochs share (after Accelerate's prepare)."""

    setup: Setup
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
    stop: StopFlag
    extras: Extras  # mixup / cutmix, the EMA, the best epoch kept (each as the recipe asks)

    def finished(self, p: Progress) -> bool:
        t = self.setup.recipe.train
        return p.epoch >= self.epochs or bool(t.max_steps and p.step >= t.max_steps)

    def save(self, p: Progress) -> Path:
        """A resumable checkpoint of where the loop is (every process calls this)."""
        return self.folder.save_checkpoint(self.setup.accelerator, {**asdict(p), "scheduler": self.scheduler.state_dict(),
                                           "extras": self.extras.state()}, self.setup.recipe.train.keep_checkpoints,
                                           self.extras.tensors())

    def base_lr(self) -> float:
        """The scheduled lr (layer-wise decay scales it per parameter group by the group's `lr_scale`)."""
        group = self.optimizer.param_groups[0]
        return group["lr"] / group.get("lr_scale", 1.0)


def make_optimizer(model: nn.Module, t: Any) -> torch.optim.Optimizer:
    """timm's optimizer over the learned parameters only (it skips requires_grad=False, and puts biases
    and norm weights in a no-weight-decay group). With train.layer_decay, timm's layer-wise groups: each
    carries an lr_scale that timm's schedulers apply, layer_decay^(layers above it), counted over the
    network's layers whether they learn or not, so a learned block's lr follows its depth in the network."""
    return create_optimizer_v2(model, opt=t.opt, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum,
                               layer_decay=t.layer_decay)


def _build_loop(s: Setup, folder: RunFolder, stop: StopFlag) -> tuple[Loop, Optional[cache.Cached]]:
    """Optimizer, scheduler and loaders over what trains: the whole model on images, or (feature cache)
    the part after the fixed prefix on its cached features; both share the model's parameters."""
    recipe, acc, t = s.recipe, s.accelerator, s.recipe.train
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
    optimizer = make_optimizer(s.model, t)
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
    extras = Extras(recipe, s.model, len(s.bundle.class_names))  # after prepare: the model is on its device
    loop = Loop(s, folder, model, forward, optimizer, scheduler, train_loader, val_loader, extras.criterion, learned,
                epochs, stop, extras)
    return loop, cached


def train(s: Setup, folder: RunFolder, resume_from: Optional[Path], stop: StopFlag) -> tuple[dict[str, Any], nn.Module]:
    """The driver: epochs of training, each followed by evaluation and a checkpoint. Returns (summary,
    trained model)."""
    loop, cached = _build_loop(s, folder, stop)
    p = Progress()
    if resume_from is not None:  # model, optimizer, scheduler, RNG states, and where the loop was
        state, tensors = folder.load_checkpoint(s.accelerator, resume_from)
        loop.scheduler.load_state_dict(state.pop("scheduler"))  # plain data (Accelerate would unpickle it)
        loop.extras.load(state.pop("extras", None), tensors)
        p = Progress(**state)
        if s.accelerator.is_main_process:
            folder.keep_metrics(p.metrics_lines)
    batches = loop.train_loader
    try:
        if s.solver == "exact":  # a convex problem: solved to convergence on the cached features, no epochs
            p.solver = probe.train_exact(cached, len(s.bundle.class_names), s.recipe.train.seed, s.accelerator)
            p.loss_sum, p.loss_count = p.solver["train_loss"], 1  # (its time: the epoch meter's)
            loop.epochs = 1
            end_of_epoch(loop, p)
        while s.solver == "loop" and not loop.finished(p):
            batches = train_one_epoch(loop, p)
            end_of_epoch(loop, p)
            p = p.next_epoch()
            if not loop.finished(p):
                saved = loop.save(p)
                if collective.stop_requested(s.accelerator, stop):
                    raise Interrupted(stop.signum, p.step, saved)
    finally:  # on errors too: persistent workers must not outlive the loop (see loaders.shutdown_workers)
        loaders.shutdown_workers(loop.train_loader, loop.val_loader, batches)
    best = loop.extras.finish(s.model)  # the averaged values, the best epoch's: what the run keeps
    summary = summarize(s.recipe, s.plan, p, loop.optimizer, s.accelerator.device, s.accelerator.num_processes,
                        s.bundle.class_names, s.data_config, s.cache.note, cached.info if cached else None)
    summary["preload"] = s.preload
    if best is not None:  # the kept epoch's measurements, not the last one's
        summary.update({k: best.get(k) for k in ("val_top1", "val_top5", "val_loss")}, kept_epoch=best["epoch"])
    return summary, s.model


def train_one_epoch(loop: Loop, p: Progress) -> Any:
    """One epoch of accumulated, clipped, scheduled steps (resuming mid-epoch where `p` says); a checkpoint
    every `checkpoint_every` steps and on SIGTERM / Ctrl-C. Returns the batch iterator it used."""
    acc, t = loop.setup.accelerator, loop.setup.recipe.train
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
            lr = loop.base_lr()
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
    acc, t = loop.setup.accelerator, loop.setup.recipe.train
    x, y = loop.extras.mix(x, y)  # (before the layout change: mixing concatenates)
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
    images = x.shape[0] * acc.num_processes
    p.epoch_images += images
    value = loss.item()
    p.loss_sum, p.loss_count = p.loss_sum + value, p.loss_count + 1
    p.window_sum, p.window_count = p.window_sum + value, p.window_count + 1
    p.meter.add(images)
    if not acc.sync_gradients:
        return False  # checkpoints and stops only fall between whole (accumulated) steps
    p.step += 1
    loop.extras.stepped(p.step)
    loop.scheduler.step_update(p.step)
    p.meter.step()
    return True


def end_of_epoch(loop: Loop, p: Progress) -> None:
    """Close the epoch's books, measure on the validation split, log a metrics line."""
    s, acc = loop.setup, loop.setup.accelerator
    p.close_epoch()
    with loop.extras.kept_values():  # measure what the run would keep
        p.metrics = evaluate(loop.forward, loop.val_loader, acc, len(s.bundle.class_names))
        p.metrics.update(epoch=p.epoch + 1, step=p.step, train_loss=p.loss_sum / max(p.loss_count, 1),
                         lr=loop.base_lr(), train_seconds=round(p.train_seconds, 3), loss_curve=p.losses)
        loop.extras.offer(s.model, p.metrics)
    tracking.log(acc, {k: v for k, v in p.metrics.items() if k != "per_class_top1"}, p.step)
    if acc.is_main_process:
        loop.folder.append_metrics(p.metrics)
        m = p.metrics
        top5 = "" if m["val_top5"] is None else f"  val_top5 {m['val_top5']:.4f}"
        where = "solved" if p.solver["solver"] == "exact" else f"epoch {p.epoch + 1}/{loop.epochs}  step {p.step}"
        print(f"{where}  loss {m['train_loss']:.4f}  val_top1 {m['val_top1']:.4f}{top5}", flush=True)
