"""`lora`: low-rank adapters through Hugging Face PEFT, the peer baseline users pick today.

Each targeted conv / linear layer keeps its weight fixed and learns a rank-r update B·A (PEFT's LoRA
layers, injected into the timm model). The classifier is not adapted: with `head: true` it learns whole.
For export the adapters are merged into their layers, so merged_state_dict() has plain timm keys.
"""
from __future__ import annotations

import copy
import re
import sys
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from ..errors import UserError
from ..layers import classifier_params, weight_layers
from .context import Context
from .registry import register, register_export_hook
from .types import Options, Selection, option


@dataclass
class LoraOptions(Options):
    rank: int = option(8, "the rank r of each update B·A")
    alpha: Optional[float] = option(None, "scaling alpha / rank (default: alpha = rank, scale 1)")
    dropout: float = option(0.0, "dropout on the adapters' input")
    layers: Literal["conv", "linear", "all"] = option("all", "which layers get adapters")
    modules: Optional[str] = option(None, "a regex searched in each layer's full module name, narrowing "
                                                     "the adapted layers to those it matches, e.g. `^conv1$`")

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


@register("lora", options=LoraOptions, size_option="rank")
def lora(model: nn.Module, opts: LoraOptions, ctx: Context) -> Selection:
    """LoRA (via PEFT): each conv/linear layer learns a rank-r update; its weight stays fixed."""
    try:  # imported here: peft is an optional dependency, and a slow import the other strategies skip
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise UserError("the lora strategy needs peft: pip install 'partial_ft[peft]'") from None
    names = targets(model, opts)
    if not names:
        raise UserError(f"strategy lora: no {opts.layers} layers match modules={opts.modules!r}")
    _check_rank(model, names, opts.rank)
    # a string target_modules is matched by PEFT with re.fullmatch against each full module name; a list
    # would also adapt every module whose name merely ends with a listed one (`conv1` -> `layer1.0.conv1`)
    exactly = "|".join(re.escape(n) for n in names)
    config = LoraConfig(r=opts.rank, lora_alpha=opts.alpha or opts.rank, lora_dropout=opts.dropout,
                        target_modules=exactly, bias="none")
    with torch.random.fork_rng(devices=[]):  # PEFT draws lora_A from the global generator: seed it
        torch.manual_seed(ctx.seed)
        inject_adapter_in_model(config, model)
    # what learns: the parameters PEFT's layers declare as adapter weights (lora_A, lora_B, ...)
    return Selection(whole={f"{name}.{kind}.{p}" for name, layer in _tuner_layers(model)
                            for kind in layer.adapter_layer_names
                            for p, _ in getattr(layer, kind).named_parameters()})


def full_rank(layer: nn.Module) -> int:
    """The largest rank an update of this layer's weight can have: min(out, in) for a linear layer,
    min(out, in x kernel area) for a convolution (PEFT's lora_A is a conv of the layer's kernel)."""
    weight = layer.weight
    return min(weight.shape[0], weight[0].numel())


def _check_rank(model: nn.Module, names: list[str], rank: int) -> None:
    """A rank above a layer's full rank learns more values than any update of it needs (and a huge one
    allocates adapters far larger than the model): refused, naming the smallest such layer."""
    sizes = {name: full_rank(model.get_submodule(name)) for name in names}
    name = min(sizes, key=lambda n: sizes[n])
    if rank > sizes[name]:
        raise UserError(f"strategy.rank {rank:,} is above the size of layer '{name}' (its weight updates have rank "
                        f"at most {sizes[name]}); lower strategy.rank, or leave such layers out with strategy.modules")


def _tuner_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """PEFT's adapter layers (BaseTunerLayer) in `model`, by module name."""
    if "peft" not in sys.modules:  # never imported: no adapter can exist (and the import is slow)
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


@register_export_hook
def merge_lora(model: nn.Module) -> nn.Module:
    """A copy of `model` with every LoRA layer merged into its base layer (plain timm modules and keys),
    by the loop of PEFT's merge_and_unload: merge, then put the base layer in the adapter layer's place."""
    if not _tuner_layers(model):
        return model
    model = copy.deepcopy(model)
    for name, layer in _tuner_layers(model):
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    return model
