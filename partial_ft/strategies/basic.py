"""`full` (everything learns) and `head` (only the new classifier learns)."""
from __future__ import annotations

from torch import nn

from .context import Context
from .registry import register
from .types import Options, Selection


@register("full")
def full(model: nn.Module, opts: Options, ctx: Context) -> Selection:
    """Full fine-tuning: every parameter learns (the reference every strategy is compared with)."""
    return Selection(whole={n for n, _ in model.named_parameters()})


@register("head")
def head(model: nn.Module, opts: Options, ctx: Context) -> Selection:
    """Linear probe: only the new classifier learns (plus norm layers with norm: true)."""
    return Selection()
