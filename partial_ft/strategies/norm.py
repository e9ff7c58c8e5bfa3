"""`norm` (alias `bn`): only the normalisation layers learn."""
from __future__ import annotations

from torch import nn

from ..layers import norm_params
from .context import Context
from .registry import register
from .types import Options, Selection


@register("norm", aliases=("bn",))
def norm(model: nn.Module, opts: Options, ctx: Context) -> Selection:
    """Only the normalisation layers' affine parameters learn (BatchNorm, LayerNorm, GroupNorm)."""
    return Selection(whole=norm_params(model))
