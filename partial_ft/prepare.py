"""A run's setup, in narrow steps: data, model, strategy, loaders (torchtune's recipe shape). Each step
starts from the one before it and hands on only what later steps need, so one call runs them in order
and nothing goes back up to a step that is done: `prepare` asks `_setup_loaders`, which starts from
`_setup_strategy`, which starts from `_setup_model`, which starts from `_setup_data`. Each part is built
once; any user mistake surfaces here as a UserError, before the run folder is touched. train.py runs what
this builds."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, parse_flag_from_env, set_seed
from torch import nn

from . import data, delta, gradients, loaders, models, preload, probe, rundir, signals, tracking, transforms
from .cache import Decision
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
    cache: Decision  # train from cached features of the fixed prefix, or from images
    preload: str  # what data.preload decided (preload.decide's note)
    preload_seconds: float  # decoding every image (preloaded data)
    solver: str  # 'exact' (a cached linear head solved to convergence, probe.py) or 'loop'


class Built(NamedTuple):
    """What the model step hands on: the data, the backbone, its random-init factory, data config, transforms."""

    bundle: data.DataBundle
    model: nn.Module
    init_model: Callable[[], nn.Module]
    data_config: dict
    tfs: transforms.Transforms


class Applied(NamedTuple):
    """What the strategy step hands on: the model step's parts, the Accelerator and the strategy's plan."""

    built: Built
    accelerator: Accelerator
    plan: Plan


def prepare(recipe: Recipe, resuming: bool = False) -> Setup:
    """Build data, model, plan and loaders. `resuming` (a run folder with a checkpoint): the strategy the
    folder recorded, data-driven choices resolved, replaces the recipe's (rebuilt without a scoring pass)."""
    return _setup_loaders(recipe, resuming)


def _setup_data(recipe: Recipe) -> data.DataBundle:
    """Step 1, the data: the train and validation splits, their columns and class names. Seeded first."""
    set_seed(recipe.train.seed)
    # the process state alone (the Accelerator comes with the strategy step, which first needs it)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    with state.main_process_first():  # the first process fills the datasets cache
        return data.load(recipe.data, seed=recipe.train.seed)


def _setup_model(recipe: Recipe) -> Built:
    """Step 2, the model: the backbone with its new classifier for step 1's classes, a factory for its
    random init, its data config and the transforms built from it (once: everything after uses these), all
    tried on a tiny input."""
    bundle = _setup_data(recipe)
    model, init_model = models.build(recipe.model, bundle.num_classes, seed=recipe.train.seed)
    data_config = models.data_config(model, recipe.data)
    models.try_forward(model, recipe.model.name, tuple(data_config["input_size"]))
    return Built(bundle, model, init_model, data_config, transforms.build(recipe.data, data_config))


def _setup_strategy(recipe: Recipe, resuming: bool) -> Applied:
    """Step 3, the strategy, on step 2's model, with the Accelerator (trackers, precision, gradient
    accumulation, seeded loaders). Strategies that choose from the gradient signal draw it here, before any
    optimizer exists, from a plain loader of their own over the training images; a resumed run applies the
    strategy its folder recorded instead, and keeps the first session's scoring time."""
    built, t = _setup_model(recipe), recipe.train
    accelerator = Accelerator(
        **tracking.accelerator_kwargs(t.log_with, recipe.run_dir),
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.grad_accum_steps,
        # batches come pinned on a GPU (loaders), so their copies to it need not block
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
        step_scheduler_with_optimizer=False,
    )
    recorded = rundir.read_strategy(recipe.run_dir) if resuming else None  # (written before any checkpoint)
    source = gradients.for_training(loaders.train_dataset(built.bundle, recipe.data, built.tfs, t.seed), t.batch_size,
                                    recipe.data.num_workers, accelerator,
                                    nn.CrossEntropyLoss(label_smoothing=t.label_smoothing), t.seed, t.channels_last)
    with signals.stop_on_signals():
        plan = apply_strategy(built.model, recorded["strategy"] if recorded else recipe.strategy, seed=t.seed,
                              init_model=built.init_model, gradients=source)
    if recorded:
        plan.scoring_seconds = recorded["scoring_seconds"]
    return Applied(built, accelerator, plan)


def _setup_loaders(recipe: Recipe, resuming: bool) -> Setup:
    """Step 4, the loaders for step 3's plan: whether the fixed prefix's features are cached, the solver,
    the train and validation loaders (preloaded or per image, shielded from stop signals); then the
    fingerprint of the fixed values, and the whole Setup."""
    (bundle, model, _, data_config, tfs), acc, plan = _setup_strategy(recipe, resuming)
    t = recipe.train
    decision, solver = probe.choose(recipe, model, tfs.deterministic, tuple(data_config["input_size"]),
                                    len(bundle.train) + len(bundle.val))  # the feature cache, then the solver
    batches = (t.batch_size, loaders.eval_batch_size(t.eval_batch_size, t.batch_size, acc.device))
    made = preload.make_loaders(bundle, recipe.data, data_config, tfs, batches, t.seed, acc.device,
                                decision.cut is not None)  # auto: not for what the cache reads once anyway
    # the main process saves deltas, and with them this fingerprint (of contiguous copies: channels_last or not)
    fingerprint = delta.fingerprint_parts(model) if acc.is_main_process else {}
    signals.shield_workers(made.train, made.val)  # SIGTERM / Ctrl-C: the loop checkpoints first
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    return Setup(recipe, acc, bundle, model, plan, data_config, made.train, made.val, fingerprint, decision,
                 made.note, made.seconds, solver)
