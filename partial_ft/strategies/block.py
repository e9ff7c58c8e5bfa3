"""`block`: learn one or more whole blocks of the model, as timm's group_matcher defines them.

`index: auto` picks the block by relative gradient norm, ‖g‖ / ‖w‖ per block (Surgical Fine-Tuning's
Auto-RGN), from a scoring pass over `batches` training batches; the chosen index is recorded, so a
delta rebuilds the same block without data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Optional, Union

from torch import nn

from ..errors import UserError
from ..layers import blocks
from .context import Context
from .registry import register
from .types import Options, Selection, option, recorded


@dataclass
class BlockOptions(Options):
    index: Union[Literal["first", "middle", "last", "auto"], int, list[int]] = option(
        "middle", "the block(s) that learn: first | middle | last | auto (largest relative gradient) | index | "
        "[indices]")
    coarse: bool = option(True, "timm's coarse grouping (stages), or fine (individual blocks)")
    batches: Optional[int] = option(None, "training batches index: auto's scoring pass draws (default 8, or all "
                                    "if fewer)")
    chosen: Optional[int] = recorded("the block index: auto chose (written by the scoring pass; set, no scoring)")

    def validate(self) -> None:
        if self.batches is not None and self.batches < 1:
            raise UserError(f"strategy.batches must be >= 1, got {self.batches}")
        if self.chosen is not None and self.index != "auto":
            raise UserError("strategy.chosen records what index: auto chose; it goes with index: auto only")
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


def relative_gradient_norms(model: nn.Module, groups: list[list[str]], ctx: Context,
                            batches: Optional[int]) -> list[float]:
    """Per block, ‖g‖ / ‖w‖: the gradient's root mean square norm over the scoring batches, over the
    weights' norm (a block of zeros counts as norm 1, not a division by zero)."""
    stats = ctx.gradient_stats(model, batches, "strategy block (index: auto)")
    params = dict(model.named_parameters())
    out = []
    for names in groups:
        g = sum(float(stats.sq[n].double().sum()) for n in names) / max(stats.batches, 1)
        w = sum(float(params[n].detach().double().square().sum()) for n in names)
        out.append((g ** 0.5) / (w ** 0.5 if w > 0 else 1.0))
    return out


def _label(names: list[str]) -> str:
    """A block's name: the module path its parameters share (e.g. layer3), else its first parameter's."""
    common = os.path.commonprefix([n.split(".") for n in names])
    return ".".join(common) if common else names[0].rsplit(".", 1)[0]


@register("block", options=BlockOptions)
def block(model: nn.Module, opts: BlockOptions, ctx: Context) -> Selection:
    """Learn whole blocks (first | middle | last | auto | index | [indices]) of timm's grouping; the rest stays fixed."""
    groups = blocks(model, opts.coarse)
    name = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
    sel = Selection()
    if opts.index == "auto" and opts.chosen is not None:
        chosen = resolve_indices(opts.chosen, len(groups), name)
    elif opts.index == "auto":
        rgn = relative_gradient_norms(model, groups, ctx, opts.batches)
        order = sorted(range(len(groups)), key=lambda i: -rgn[i])
        best = order[0]
        sel.resolved = {"chosen": best}
        sel.remarks.append(_won(groups, rgn, order, ctx.scoring_seconds,
                                ctx.check_batches(opts.batches, "strategy block")))
        chosen = [best]
    else:
        chosen = resolve_indices(opts.index, len(groups), name)
    sel.whole = {p for i in chosen for p in groups[i]}
    return sel


def _won(groups: list[list[str]], rgn: list[float], order: list[int], seconds: float, batches: int) -> str:
    """The plan's line on which block won and by how much."""
    best = order[0]
    line = f"block index auto: block {best} ({_label(groups[best])}) has the largest ‖g‖/‖w‖, {rgn[best]:.3g}"
    if len(order) > 1:
        second = order[1]
        ratio = rgn[best] / rgn[second] if rgn[second] > 0 else float("inf")
        line += f", {ratio:.2f}x the next, block {second} ({_label(groups[second])}, {rgn[second]:.3g})"
    all_blocks = ", ".join(f"{i}: {r:.3g}" for i, r in enumerate(rgn))
    return f"{line}; all blocks: {all_blocks}; scoring pass over {batches} batches in {seconds:.1f} s"
