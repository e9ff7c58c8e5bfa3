"""`bias`: only the biases learn (BitFit, Ben Zaken et al. 2022)."""
from __future__ import annotations

from torch import nn

from ..layers import bias_params
from .context import Context
from .registry import register
from .types import Options, Selection


@register("bias")
def bias(model: nn.Module, opts: Options, ctx: Context) -> Selection:
    """BitFit: only the biases learn."""
    return Selection(whole=bias_params(model))
