"""partial_ft: adapt timm backbones to new image tasks by learning only a small part of their weights.

Public API (what tools/ and other programs use; everything else is internal):
    apply_strategy(model, spec) -> Plan      make only what `spec` selects learnable
    list_strategies()                        the registered strategies
    size_to_budget(model, spec, budget)      a spec's size option set to learn about (or at most) a budget
    learned_count(model, spec)               (learned, total) parameters of the plan a spec builds
    merged_state_dict(model)                 a plain timm state dict with full (joined) weights
    learned_masks(model)                     per weight, which entries learned (True) and which stayed fixed
    load_delta(source)                       a trained model rebuilt from its delta: a run folder, a pushed
                                             folder, a delta file or a Hub repo id
    load_recipe(path, overrides) -> Recipe   a recipe file with `section.key=value` overrides, validated
    load_yaml(path, what)                    a YAML file read safely (what recipes and grids are read with)
    parse_yaml(text, where)                  YAML text read the same way (an override's or option's value)
    load_data(cfg, seed) -> DataBundle       a recipe's data section as train / validation splits
    build_model(cfg, num_classes, seed)      a recipe's timm model with a new classifier (and its random init)
    eval_transform(data_config), eval_loader(bundle, cfg, transform, batch_size, seed)
                                             a run's eval preprocessing, and the validation loader over it
    shutdown_workers(*loaders)               stop a DataLoader's persistent workers now
    digits()                                 the built-in offline digits dataset (a DatasetDict)
    RunFolder(path)                          a run folder: its recipe, summary and other files, read and written
    run(recipe) -> summary                   train as a recipe says (what `python -m partial_ft` runs)
    prepare_run(recipe) -> Setup             a run's data, model, plan and loaders, without training
    UserError                                a user's mistake: one line, no traceback
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from torch import nn

from . import delta, hub
from .budget import learned_count, size_to_budget
from .data import load as load_data
from .data_sources import digits
from .delta import merged_state_dict
from .errors import UserError
from .loaders import eval_loader, shutdown_workers
from .transforms import eval_transform
from .models import build as build_model
from .partial import learned_masks
from .recipe import Recipe
from .recipe import load as load_recipe
from .rundir import RunFolder
from .strategies import Plan, apply_strategy, list_strategies
from .version import __version__
from .yamlsafe import load as parse_yaml
from .yamlsafe import load_file as load_yaml

__all__ = ["apply_strategy", "list_strategies", "learned_count", "size_to_budget", "load_delta", "merged_state_dict",
           "learned_masks", "load_recipe", "load_yaml", "parse_yaml", "load_data", "build_model", "eval_transform", "eval_loader",
           "shutdown_workers", "digits", "RunFolder", "Recipe", "run", "prepare_run", "Plan", "UserError", "__version__"]

# the training run pulls in Accelerate and friends: imported when first asked for, so that loading a
# delta or listing strategies stays quick
_ON_FIRST_USE = {"run": ("train", "run"), "prepare_run": ("prepare", "prepare")}


def __getattr__(name: str) -> Any:
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module 'partial_ft' has no attribute {name!r}")
    module, attr = _ON_FIRST_USE[name]
    return getattr(importlib.import_module(f".{module}", __name__), attr)


def load_delta(source: str | Path) -> nn.Module:
    """Rebuild a trained model from its delta. SOURCE is a run folder, its delta.safetensors, a folder
    written by `push --local-dir`, or a Hub repo id that `push` uploaded (downloaded through
    huggingface_hub's cache, so it works offline once cached; nothing is unpickled). The base is rebuilt
    and checked against the fingerprint of the fixed values the delta was trained on (see
    delta.rebuild). Returns the model on CPU in eval mode."""
    return delta.rebuild(hub.resolve(source))
