"""partial_ft: adapt timm backbones to new image tasks by learning only a small part of their weights.

Public API:
    apply_strategy(model, spec) -> Plan      make only what `spec` selects learnable
    list_strategies()                        the registered strategies
    merged_state_dict(model)                 a plain timm state dict with full (joined) weights
"""
from __future__ import annotations

__version__ = "0.1.0"

import torch
from torch import nn

from .strategies import Plan, apply_strategy, list_strategies

__all__ = ["apply_strategy", "list_strategies", "merged_state_dict", "Plan", "__version__"]


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A plain state dict with timm's keys and full tensors (learned and fixed parts joined), loadable
    into a fresh `timm.create_model(name, num_classes=...)`."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP / accelerate wrappers
        model = model.module
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
