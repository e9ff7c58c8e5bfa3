"""The candidates `advise` compares, each sized to the parameter budget on the real plan, and the checks of
what the user asked for (budget, data) made before anything is written.

A candidate is plain data: a strategy node and the recipe overrides it needs. Those with a size option
(`filters`' fraction, `lora`'s rank) get the largest size that fits the budget; those with a budget option
(`auto`) get the budget; the others have a fixed size. Choices a strategy makes from data (`block` with
`index: auto`, `auto`'s units) are made here, once, on the carve-out's training part, so the learned count
is exact and every trial of a candidate trains the same selection. A candidate that learns more than the
budget is listed as skipped, with its count; `full` is the reference outside the budget.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from accelerate import Accelerator
from torch import nn

from .. import data, gradients, loaders, models, transforms
from ..budget import budget_count, learned_count, size_to_budget
from ..data_columns import label_array
from ..errors import UserError
from ..recipe import Recipe
from ..strategies import apply_strategy, get
from .table import SKIPPED, Row

PROBE = "probe"
# (row name, strategy node, recipe values by dotted key, inside the budget). The exact linear probe: the classifier
# solved to convergence on cached features (no augmentation and fixed BatchNorm statistics: cacheable).
CANDIDATES: list[tuple[str, dict, dict[str, Any], bool]] = [
    (PROBE, {"name": "head", "norm_stats": "freeze"}, {"train.solver": "exact", "data.augment": False}, True),
    ("norm", {"name": "norm"}, {}, True),
    ("bias", {"name": "bias"}, {}, True),
    ("block", {"name": "block", "index": "auto"}, {}, True),
    ("filters", {"name": "filters"}, {}, True),
    ("auto", {"name": "auto", "score": "fisher"}, {}, True),
    ("lora", {"name": "lora"}, {}, True),
    ("full", {"name": "full"}, {}, False),
]


@dataclass
class Task:
    """The carve-out task every candidate is tuned on, and the model's size."""

    bundle: data.DataBundle
    model: nn.Module
    init_model: Any
    total: int
    budget: int
    minimum: int  # what the classifier alone learns


def load_task(recipe: Recipe, budget: float) -> Task:
    """Load the carve-out (recipe.data.tune_fraction set), build the model, check the budget and the data:
    a budget below the classifier alone, or a carve-out (or its training part) missing a class, is a
    UserError naming the numbers."""
    t = recipe.train
    bundle = data.load(recipe.data, seed=t.seed)
    check_carve_out(bundle, recipe.data.tune_fraction)
    model, init_model = models.build(recipe.model, bundle.num_classes, seed=t.seed)
    total = sum(p.numel() for p in model.parameters())
    goal = budget_count(budget, total)
    minimum = learned_count(model, {"name": "head"}, t.seed, init_model)[0]
    if goal < minimum:
        raise UserError(f"--budget {budget:g} is {goal:,} parameters, below what the classifier alone learns: "
                        f"{minimum:,} ({100 * minimum / total:.3g}% of {total:,}); give at least that")
    return Task(bundle, model, init_model, total, goal, minimum)


def check_carve_out(bundle: data.DataBundle, fraction: float) -> None:
    """Every class must be in the carve-out and in what is left to train on."""
    classes = bundle.num_classes
    for split, what in ((bundle.val, "the carve-out"), (bundle.train, "the training part")):
        present = np.unique(label_array(split, bundle.label_column).to_numpy())
        if len(present) < classes:
            raise UserError(f"the data is too small for a stratified carve-out ({fraction:.0%} of train) with every "
                            f"class: {what} has {len(split)} images of {len(present)} of the {classes} classes; "
                            "more images per class are needed (at least two of each)")


def size(task: Task, recipe: Recipe, only: Optional[str] = None) -> list[Row]:
    """One row per candidate (or only the one named `only`), sized to the budget; skipped with the reason
    where it cannot fit. The gradient source for data-driven choices is built only when one needs it."""
    source = None
    rows = []
    for name, node, settings, inside in CANDIDATES:
        if only is not None and name != only:
            continue
        row = Row(name, None, total=task.total, in_budget=inside, settings=dict(settings), tunes_lr=name != PROBE,
                  candidate=name)
        try:
            spec = size_to_budget(task.model, node, task.budget, recipe.train.seed, task.init_model,
                                  at_most=True, steps=20)[0] if inside and _sizable(node) else dict(node)
            if source is None and only is None:
                source = _gradients(task, recipe)
            plan = apply_strategy(copy.deepcopy(task.model), spec, seed=recipe.train.seed,
                                  init_model=task.init_model, gradients=source)
        except UserError as e:  # e.g. auto: the budget cannot pay for the classifier and the norm layers
            row.status, row.note = SKIPPED, f"cannot fit the budget: {e}"
            rows.append(row)
            continue
        row.spec, row.learned, row.resolved = spec, plan.learned, plan.spec
        if inside and plan.learned > task.budget:
            smallest = f" ({plan.label})" if plan.label != name else ""
            row.status = SKIPPED
            row.note = f"cannot fit the budget: learns {plan.learned:,} at its smallest{smallest}, over {task.budget:,}"
        elif name != PROBE:
            row.name = plan.label
        rows.append(row)
    return rows


def _sizable(node: dict) -> bool:
    """Whether the strategy has an option that sizes it (else it has one size, counted on its plan)."""
    strategy = get(node["name"])
    return bool(strategy.size_option or strategy.budget_option)


def _gradients(task: Task, recipe: Recipe) -> Any:
    """The gradient source a training run gives strategies (prepare's), over the carve-out's training part."""
    t = recipe.train
    acc = Accelerator(mixed_precision=t.mixed_precision)
    tfs = transforms.build(recipe.data, models.data_config(task.model, recipe.data))
    return gradients.for_training(loaders.train_dataset(task.bundle, recipe.data, tfs, t.seed), t.batch_size,
                                  recipe.data.num_workers, acc, nn.CrossEntropyLoss(label_smoothing=t.label_smoothing),
                                  t.seed, t.channels_last)
