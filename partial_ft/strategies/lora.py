"""`lora`: low-rank adapters through Hugging Face PEFT, the peer baseline users pick today.

Each targeted conv / linear layer keeps its weight fixed and learns a rank-r update B·A (PEFT's LoRA
layers, injected into the timm model). The classifier is not adapted: with `head: true` it learns whole.
For export the adapters are merged into their layers, so merged_state_dict() has plain timm keys.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from ..errors import UserError
from .layers import classifier_params, weight_layers
from .registry import Context, Options, Selection, register, register_export_hook


@dataclass
class LoraOptions(Options):
    rank: int = 8
    alpha: Optional[float] = None  # scaling alpha / rank; default: alpha = rank (scale 1)
    dropout: float = 0.0
    layers: Literal["conv", "linear", "all"] = "all"
    modules: Optional[str] = None  # a regex on module names to narrow the targets, e.g. 'attn|mlp'

    def validate(self) -> None:
        if self.rank < 1:
            raise UserError(f"strategy.rank must be >= 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"strategy.dropout must be in [0, 1), got {self.dropout}")
        if self.modules is not None:
            try:
                re.compile(self.modules)
            except re.error as e:
                raise UserError(f"strategy.modules is not a valid regex: {e}") from None


def targets(model: nn.Module, opts: LoraOptions) -> list[str]:
    """Conv (groups=1) and linear layers to adapt; the classifier is left to the `head` option."""
    head = classifier_params(model)
    pattern = re.compile(opts.modules) if opts.modules else None
    out = []
    for name, m in weight_layers(model, opts.layers):
        if f"{name}.weight" in head or getattr(m, "groups", 1) != 1 or type(m) not in (nn.Linear, nn.Conv2d):
            continue
        if pattern is None or pattern.search(name):
            out.append(name)
    return out


@register("lora", options=LoraOptions)
def lora(model: nn.Module, opts: LoraOptions, ctx: Context) -> Selection:
    """LoRA (via PEFT): each conv/linear layer learns a rank-r update; its weight stays fixed."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise UserError("the lora strategy needs peft: pip install 'partial_ft[peft]'") from None
    names = targets(model, opts)
    if not names:
        raise UserError(f"strategy lora: no {opts.layers} layers match modules={opts.modules!r}")
    config = LoraConfig(r=opts.rank, lora_alpha=opts.alpha or opts.rank, lora_dropout=opts.dropout,
                        target_modules=names, bias="none")
    with torch.random.fork_rng(devices=[]):  # PEFT draws lora_A from the global generator: seed it
        torch.manual_seed(ctx.seed)
        inject_adapter_in_model(config, model)
    return Selection(whole={n for n, _ in model.named_parameters() if ".lora_" in n})


def _is_adapter(module: nn.Module) -> bool:
    return hasattr(module, "get_base_layer") and hasattr(module, "merge") and hasattr(module, "lora_A")


@register_export_hook
def merge_lora(model: nn.Module) -> nn.Module:
    """A copy of `model` with every LoRA layer merged into its base layer (plain timm modules and keys)."""
    if not any(_is_adapter(m) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if _is_adapter(module):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    return model
