"""`block`: learn one or more whole blocks of the model, as timm's group_matcher defines them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from torch import nn

from ..errors import UserError
from .layers import blocks
from .registry import Context, Options, Selection, register


@dataclass
class BlockOptions(Options):
    index: Union[Literal["first", "middle", "last"], int, list[int]] = "middle"
    coarse: bool = True  # timm's coarse grouping (stages) or fine (individual blocks)

    def validate(self) -> None:
        if isinstance(self.index, list) and not self.index:
            raise UserError("strategy.index: an empty list selects no block; give one or more block indices")


def resolve_indices(index: Union[str, int, list[int]], n: int, model_name: str) -> list[int]:
    """first | middle | last | int | [ints] -> block ordinals in 0..n-1 (negative ints count back)."""
    named = {"first": 0, "middle": n // 2, "last": n - 1}
    wanted = [named[index]] if isinstance(index, str) else ([index] if isinstance(index, int) else index)
    out = []
    for i in wanted:
        if not -n <= i < n:
            raise UserError(f"block index {i} is outside {model_name}'s {n} blocks (0..{n - 1})")
        out.append(i % n)
    return sorted(set(out))


@register("block", options=BlockOptions)
def block(model: nn.Module, opts: BlockOptions, ctx: Context) -> Selection:
    """Learn whole blocks (first | middle | last | index | [indices]) of timm's grouping; the rest stays fixed."""
    groups = blocks(model, opts.coarse)
    name = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
    chosen = resolve_indices(opts.index, len(groups), name)
    return Selection(whole={p for i in chosen for p in groups[i]})
