"""`filters`: learn a fraction (or a count) of every layer's weight tensor, the rest fixed.

The paper's main experiment: slice each conv (and/or linear) weight along its output filters, its
input channels, or its kernel positions; learn the chosen slices, keep the rest at their loaded values,
at a fresh random init, or at zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from ..errors import UserError
from ..partial import axis_size
from ..layers import classifier_params, weight_layers
from .context import Context
from .registry import register
from .types import Options, PartialSpec, Selection, option


@dataclass
class FiltersOptions(Options):
    fraction: Optional[float] = option(None, "0 < f <= 1 of each layer's slices (default 0.1 when no count)")
    count: Optional[int] = option(None, "or a fixed number of slices per layer (1 = a single filter)")
    dim: Literal["out", "in", "spatial"] = option("out", "slice along output filters, input channels or kernel "
                                                  "positions")
    select: Literal["first", "random"] = option("first", "which slices learn: the first ones, or a seeded draw")
    fixed: Literal["keep", "random", "zero"] = option("keep", "the fixed part: loaded values, a fresh random init, "
                                                      "or zero")
    layers: Literal["conv", "linear", "all"] = option("conv", "which weight layers are sliced")
    # fixed: random always uses train.seed, so ensemble members differing only by this seed share one backbone
    seed: Optional[int] = option(None, "the seed of `select: random` (default: train.seed; `fixed: random` always "
                                       "uses train.seed)")
    norm: bool = option(True, "norm layers learn too (as in the paper; norm: false is its ablation)")

    def validate(self) -> None:
        if self.fraction is not None and self.count is not None:
            raise UserError("strategy filters: set fraction or count, not both")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise UserError(f"strategy.fraction must be in (0, 1], got {self.fraction}")
        if self.count is not None and self.count < 1:
            raise UserError(f"strategy.count must be >= 1, got {self.count}")
        if self.fraction is None and self.count is None:
            self.fraction = 0.1


def slice_count(n: int, fraction: Optional[float], count: Optional[int]) -> int:
    """How many of a layer's n slices learn (at least one)."""
    return min(n, count) if count is not None else max(1, round(fraction * n))


@register("filters", options=FiltersOptions, size_option="fraction")
def filters(model: nn.Module, opts: FiltersOptions, ctx: Context) -> Selection:
    """Learn a fraction or count of each layer's filters (out), input channels (in) or kernel positions (spatial)."""
    seed = ctx.seed if opts.seed is None else opts.seed
    generator = torch.Generator().manual_seed(seed)
    head = classifier_params(model) if opts.head else set()
    sel = Selection()
    for name, module in weight_layers(model, opts.layers):
        if f"{name}.weight" in head:
            continue  # the classifier learns whole
        n = axis_size(module.weight.shape, opts.dim)
        k = slice_count(n, opts.fraction, opts.count)
        if k >= n:
            sel.whole.add(f"{name}.weight")
            continue
        if opts.select == "first":
            index = torch.arange(k)
        else:
            index = torch.randperm(n, generator=generator)[:k]
        if opts.fixed == "keep":
            source = None
        elif opts.fixed == "zero":
            source = torch.zeros_like(module.weight)
        else:
            source = ctx.random_weight(name, module)
        sel.partial[name] = PartialSpec(opts.dim, index, source)
    return sel
