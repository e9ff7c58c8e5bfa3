"""partial_ft: adapt timm backbones to new image tasks by learning only a small part of their weights.

Public API:
    apply_strategy(model, spec) -> Plan      make only what `spec` selects learnable
    list_strategies()                        the registered strategies
    merged_state_dict(model)                 a plain timm state dict with full (joined) weights
    load_delta(path)                         a trained model rebuilt from its run's delta.safetensors
"""
from __future__ import annotations

from .delta import load_delta, merged_state_dict
from .strategies import Plan, apply_strategy, list_strategies
from .version import __version__

__all__ = ["apply_strategy", "list_strategies", "load_delta", "merged_state_dict", "Plan", "__version__"]
