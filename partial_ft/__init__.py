"""partial_ft: adapt timm backbones to new image tasks by learning only a small part of their weights.

Public API:
    apply_strategy(model, spec) -> Plan      make only what `spec` selects learnable
    list_strategies()                        the registered strategies
    size_to_budget(model, spec, budget)      a spec's size option set to learn about (or at most) a budget
    learned_count(model, spec)               (learned, total) parameters of the plan a spec builds
    merged_state_dict(model)                 a plain timm state dict with full (joined) weights
    load_delta(source)                       a trained model rebuilt from its delta: a run folder, a pushed
                                             folder, a delta file or a Hub repo id
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from . import delta, hub
from .budget import learned_count, size_to_budget
from .delta import merged_state_dict
from .strategies import Plan, apply_strategy, list_strategies
from .version import __version__

__all__ = ["apply_strategy", "list_strategies", "learned_count", "size_to_budget", "load_delta", "merged_state_dict", "Plan", "__version__"]


def load_delta(source: str | Path) -> nn.Module:
    """Rebuild a trained model from its delta. SOURCE is a run folder, its delta.safetensors, a folder
    written by `push --local-dir`, or a Hub repo id that `push` uploaded (downloaded through
    huggingface_hub's cache, so it works offline once cached; nothing is unpickled). The base is rebuilt
    and checked against the fingerprint of the fixed values the delta was trained on (see
    delta.load_delta). Returns the model on CPU in eval mode."""
    return delta.load_delta(hub.resolve(source))
