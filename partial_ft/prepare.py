"""A run's setup, in narrow steps: data, model, strategy, loaders (torchtune's recipe shape). Each step
builds its part once and returns only what later steps need; any user mistake surfaces here as a
UserError, before the run folder is touched. train.py runs what this builds."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch import nn

from . import cache, data, delta, gradients, loaders, mixing, models, preload, probe, rundir, signals, tracking
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
    fingerprint: dict[str, str]  # fingerprint parts of the fixed values, taken before training (they never change)
    cache: cache.Decision  # train from cached features of the fixed prefix, or from images
    preload: str  # what data.preload decided (preload.decide's note)
    preload_seconds: float  # decoding every image (preloaded data)
    solver: str  # 'exact' (a cached linear head solved to convergence, probe.py) or 'loop'


def prepare(recipe: Recipe, resuming: bool = False) -> Setup:
    """Build data, model, plan and loaders. `resuming` (a run folder with a checkpoint): the strategy the
    folder recorded, data-driven choices resolved, replaces the recipe's (rebuilt without a scoring pass)."""
    accelerator = _setup_accelerator(recipe)
    bundle = _setup_data(recipe, accelerator)
    model, init_model, data_config, tfs = _setup_model(recipe, bundle.num_classes)
    plan = _setup_strategy(recipe, accelerator, bundle, tfs, model, init_model, resuming)
    decision = (cache.Decision(None, "not used: data.mixup / data.cutmix mix images") if mixing.mixes(recipe.data)
                else cache.decide_cut(model, recipe.train.cache_features, tfs.deterministic,
                                      tuple(data_config["input_size"]), len(bundle.train) + len(bundle.val)))
    solver = probe.choose(recipe, decision.cut)
    made = _setup_loaders(recipe, accelerator, bundle, data_config, tfs, decision.cut is not None)
    if recipe.train.channels_last:
        model.to(memory_format=torch.channels_last)
    # the main process saves deltas, and with them this fingerprint
    fingerprint = delta.fingerprint_parts(model) if accelerator.is_main_process else {}
    return Setup(recipe, accelerator, bundle, model, plan, data_config, made.train, made.val, fingerprint, decision,
                 made.note, made.seconds, solver)


def _setup_accelerator(recipe: Recipe) -> Accelerator:
    """The Accelerator: trackers, precision, gradient accumulation, seeded loaders."""
    t = recipe.train
    accelerator = Accelerator(
        **tracking.accelerator_kwargs(t.log_with, recipe.run_dir),
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.grad_accum_steps,
        # batches come pinned on a GPU (loaders), so their copies to it need not block
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
        step_scheduler_with_optimizer=False,
    )
    set_seed(t.seed)
    return accelerator


def _setup_data(recipe: Recipe, accelerator: Accelerator) -> data.DataBundle:
    """The train and validation splits, their columns and class names."""
    with accelerator.main_process_first():  # the first process fills the datasets cache
        return data.load(recipe.data, seed=recipe.train.seed)


def _setup_model(recipe: Recipe, num_classes: int) -> tuple[nn.Module, Callable[[], nn.Module], dict,
                                                            loaders.Transforms]:
    """The backbone with its new classifier, a factory for its random init, its data config and the
    transforms built from it (once: everything after uses these), all tried on a tiny input."""
    model, init_model = models.build(recipe.model, num_classes, seed=recipe.train.seed)
    data_config = models.data_config(model, recipe.data)
    models.try_forward(model, recipe.model.name, tuple(data_config["input_size"]))
    tfs = loaders.transforms(recipe.data, data_config)
    return model, init_model, data_config, tfs


def _setup_strategy(recipe: Recipe, accelerator: Accelerator, bundle: data.DataBundle, tfs: loaders.Transforms,
                    model: nn.Module, init_model: Callable[[], nn.Module], resuming: bool) -> Plan:
    """Apply the strategy. Those that choose from the gradient signal draw it here, before any optimizer
    exists, from a plain loader of their own over the training images; a resumed run applies the strategy
    its folder recorded instead, and keeps the first session's scoring time."""
    t = recipe.train
    recorded = rundir.read_strategy(recipe.run_dir) if resuming else None  # (written before any checkpoint)
    source = gradients.for_training(loaders.train_dataset(bundle, recipe.data, tfs, t.seed), t.batch_size,
                                    recipe.data.num_workers, accelerator,
                                    nn.CrossEntropyLoss(label_smoothing=t.label_smoothing), t.seed, t.channels_last)
    with signals.stop_on_signals():
        plan = apply_strategy(model, recorded["strategy"] if recorded else recipe.strategy, seed=t.seed,
                              init_model=init_model, gradients=source)
    if recorded:
        plan.scoring_seconds = recorded["scoring_seconds"]
    return plan


def _setup_loaders(recipe: Recipe, accelerator: Accelerator, bundle: data.DataBundle, data_config: dict,
                   tfs: loaders.Transforms, cache_used: bool) -> preload.Loaders:
    """The train and validation loaders (preloaded or per image), shielded from stop signals."""
    t = recipe.train
    batches = (t.batch_size, loaders.eval_batch_size(t.eval_batch_size, t.batch_size, accelerator.device))
    made = preload.make_loaders(bundle, recipe.data, data_config, tfs, batches, t.seed, accelerator.device,
                                cache_used)  # auto: not for what the cache reads once anyway
    signals.shield_workers(made.train, made.val)  # SIGTERM / Ctrl-C: the loop checkpoints first
    return made
