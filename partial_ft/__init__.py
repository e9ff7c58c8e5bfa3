"""partial_ft: adapt timm backbones to new image tasks by learning only a small part of their weights.

Public API:
    apply_strategy(model, spec) -> Plan      make only what `spec` selects learnable
    list_strategies()                        the registered strategies
    merged_state_dict(model)                 a plain timm state dict with full (joined) weights
    load_delta(path)                         a trained model rebuilt from its run's delta.safetensors
"""
from __future__ import annotations

__version__ = "0.1.0"

import torch
from torch import nn

from .strategies import Plan, apply_strategy, for_export, list_strategies

__all__ = ["apply_strategy", "list_strategies", "load_delta", "merged_state_dict", "Plan", "__version__"]


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A plain state dict with timm's keys and full tensors (learned and fixed parts joined), loadable
    into a fresh `timm.create_model(name, num_classes=...)`."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP / accelerate wrappers
        model = model.module
    model = getattr(model, "_orig_mod", model)  # torch.compile
    model = for_export(model)  # strategies' own modules (e.g. LoRA adapters) merged back into timm's
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def load_delta(path: str) -> nn.Module:
    """Rebuild a trained model from a run's delta (`RUN_DIR/delta.safetensors`, or the run folder).

    A delta stores only what learned: learned slices, the new classifier, updated BatchNorm statistics.
    The rest is rebuilt from the base its metadata records (timm model name and kwargs; timm's pretrained
    weights, a local checkpoint file, or the seeded random init; the seeded strategy), and checked against
    the fingerprint of the fixed values it was trained on: a base that differs (other weights, another
    release's random generator) raises UserError instead of predicting garbage. Returns the model on
    CPU in eval mode; its predictions equal the trained model's.
    """
    from .checkpoint import load_delta as _load

    return _load(path)
