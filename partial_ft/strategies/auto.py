"""`auto`: choose what to learn under a parameter budget, from the gradient signal.

A scoring pass draws gradients over a few training batches (the model as training sees it, new
classifier included, no optimizer step) and scores every unit of every conv / linear weight (its
output filters, input channels or kernel positions): Σ g² (`fisher`, as SPT and FISH masks do) or
Σ |g| (`grad`, as GPS), divided by the unit's size, so units of different layers compare per parameter.
The best units across all layers learn, greedily, while they fit the budget left after the classifier
and the norm layers; `random` scores are the control (same unit, same budget, uniform over units). A
layer may get none, some or all of its units (all: the weight learns whole). The chosen indices are
recorded as the `selected` option, so a delta rebuilds the same structure without data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch
from torch import nn

from ..errors import UserError, did_you_mean
from ..partial import axis_size
from ..layers import classifier_params, norm_params, weight_layers
from .context import Context
from .registry import register
from .types import Options, PartialSpec, Selection, option, recorded

UNIT_AXIS = {"filter": "out", "channel": "in", "kernel": "spatial"}


@dataclass
class AutoOptions(Options):
    budget: Union[int, float] = option(0.01, "a fraction (0, 1) of all parameters, or an integer count; "
                                       "classifier and norm layers included")
    unit: Literal["filter", "channel", "kernel"] = option("filter", "what is scored and chosen in each weight")
    score: Literal["fisher", "grad", "random"] = option("fisher", "a unit's score: `fisher` Σ g², `grad` Σ |g|, "
                                                        "or `random` (a seeded draw)")
    batches: Optional[int] = option(None, "training batches the scoring pass draws (default 8, or all if fewer)")
    norm: bool = option(True, "norm layers learn (inside the budget), as with `filters`")
    selected: Optional[dict] = recorded("{layer: [unit indices]}: written by the scoring pass; set, no scoring")

    def validate(self) -> None:
        if isinstance(self.budget, float) and not 0 < self.budget < 1:
            raise UserError(f"strategy.budget as a fraction must be in (0, 1), got {self.budget} "
                            "(a parameter count is an integer, e.g. budget: 250000)")
        if isinstance(self.budget, int) and self.budget < 1:
            raise UserError(f"strategy.budget must be > 0, got {self.budget}")
        if self.batches is not None and self.batches < 1:
            raise UserError(f"strategy.batches must be >= 1, got {self.batches}")
        if self.selected is not None and not all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                                                   for i in v) for k, v in self.selected.items()):
            raise UserError("strategy.selected must map layer names to lists of unit indices")


def candidates(model: nn.Module, unit: str, head: bool) -> dict[str, nn.Module]:
    """Conv and linear layers with more than one `unit` (the classifier is left to `head`)."""
    skip = classifier_params(model) if head else set()
    axis = UNIT_AXIS[unit]
    return {name: m for name, m in weight_layers(model, "all")
            if f"{name}.weight" not in skip and axis_size(m.weight.shape, axis) > 1}


def budget_count(budget: Union[int, float], total: int) -> int:
    """The budget in parameters: a count as given, a fraction of `total` rounded down."""
    return budget if isinstance(budget, int) else math.floor(budget * total)


def unit_scores(model: nn.Module, layers: dict[str, nn.Module], opts: AutoOptions, ctx: Context,
                batches: int) -> dict[str, torch.Tensor]:
    """Each layer's raw unit scores (Σ g² or Σ |g| over the unit's entries; uniform draws for random)."""
    axis = UNIT_AXIS[opts.unit]
    if opts.score == "random":
        generator = torch.Generator().manual_seed(ctx.seed)
        return {name: torch.rand(axis_size(m.weight.shape, axis), generator=generator, dtype=torch.float64)
                for name, m in layers.items()}
    stats = ctx.gradient_stats(model, batches, "strategy auto")
    per_param = stats.sq if opts.score == "fisher" else stats.abs
    out = {}
    for name, m in layers.items():
        g = per_param[f"{name}.weight"].double()
        g = g.reshape(g.shape[0], g.shape[1], -1)  # (out, in, kernel positions), also for linear weights
        dims = {"out": (1, 2), "in": (0, 2), "spatial": (0, 1)}[axis]
        out[name] = g.sum(dim=dims)
    return out


def select_units(sizes: dict[str, int], scores: dict[str, torch.Tensor], budget: int,
                 per_parameter: bool = True) -> dict[str, list[int]]:
    """Global top units by score (per parameter, or per unit: random draws), taken greedily while they fit
    `budget` (a unit that does not fit is passed over for smaller ones after it). Ties go to the earlier
    layer, then the lower index."""
    names = list(scores)
    density = torch.cat([scores[n] / sizes[n] if per_parameter else scores[n] for n in names])
    units = [(n, i) for n in names for i in range(len(scores[n]))]
    smallest = min(sizes[n] for n in names) if names else 0
    chosen: dict[str, list[int]] = {}
    left = budget
    for u in torch.argsort(-density, stable=True).tolist():
        if left < smallest:
            break
        name, index = units[u]
        if sizes[name] <= left:
            left -= sizes[name]
            chosen.setdefault(name, []).append(index)
    return {n: sorted(chosen[n]) for n in names if n in chosen}


def _check_selected(selected: dict, layers: dict[str, nn.Module], axis: str) -> None:
    """A recorded (or hand-written) selection must name layers this model has, and indices they have."""
    for name, indices in selected.items():
        if name not in layers:
            raise UserError(f"strategy.selected: no layer '{name}' with more than one {axis} slice"
                            f"{did_you_mean(name, list(layers))}")
        n = axis_size(layers[name].weight.shape, axis)
        if not indices or len(set(indices)) != len(indices) or not all(0 <= i < n for i in indices):
            raise UserError(f"strategy.selected['{name}'] must list distinct indices in 0..{n - 1}")


@register("auto", options=AutoOptions, budget_option="budget")
def auto(model: nn.Module, opts: AutoOptions, ctx: Context) -> Selection:
    """Learn the units (filters, channels or kernel positions) with the most gradient signal, under a budget."""
    axis = UNIT_AXIS[opts.unit]
    layers = candidates(model, opts.unit, opts.head)
    if not layers:
        raise UserError(f"strategy auto: {type(model).__name__} has no conv or linear layer with more than one "
                        f"{opts.unit} (unit: {opts.unit}); try unit: {'kernel' if opts.unit != 'kernel' else 'filter'}")
    total = sum(p.numel() for p in model.parameters())
    budget = budget_count(opts.budget, total)
    whole = (classifier_params(model) if opts.head else set()) | (norm_params(model) if opts.norm else set())
    params = dict(model.named_parameters())
    need = sum(params[n].numel() for n in whole)
    if budget < need:
        parts = " and ".join(w for w, on in (("classifier", opts.head), ("norm layers", opts.norm)) if on)
        raise UserError(f"strategy auto: budget {budget:,} parameters ({100 * budget / total:.3g}%) is below what the "
                        f"{parts} alone need: {need:,} ({100 * need / total:.3g}% of {total:,}); raise the budget "
                        "above that, or set norm: false")
    sizes = {n: m.weight.numel() // axis_size(m.weight.shape, axis) for n, m in layers.items()}
    batches = ctx.check_batches(opts.batches, "strategy auto")
    sel = Selection()
    if opts.selected is not None:
        _check_selected(opts.selected, layers, axis)
        chosen = opts.selected
    else:
        scores = unit_scores(model, layers, opts, ctx, batches)
        # random draws are ranked as drawn (uniform over units); per parameter they would favour small units
        chosen = select_units(sizes, scores, budget - need, per_parameter=opts.score != "random")
        sel.resolved = {"selected": chosen}
        how = "" if opts.score == "random" else f"; scoring pass over {batches} batches in {ctx.scoring_seconds:.1f} s"
        sel.notes, sel.remarks = _describe(layers, sizes, scores, chosen, budget, need, opts, how)
    for name, indices in chosen.items():
        if len(indices) >= axis_size(layers[name].weight.shape, axis):
            sel.whole.add(f"{name}.weight")
        else:
            sel.partial[name] = PartialSpec(axis, torch.tensor(indices, dtype=torch.long))
    return sel


def _describe(layers: dict[str, nn.Module], sizes: dict[str, int], scores: dict[str, torch.Tensor],
              chosen: dict[str, list[int]], budget: int, need: int, opts: AutoOptions,
              how: str) -> tuple[dict[str, str], list[str]]:
    """Per-layer notes (each layer's share of the score) and the line under the plan's table."""
    mass = sum(float(s.sum()) for s in scores.values()) or 1.0
    notes = {}
    if opts.score != "random":  # the share of random draws says nothing
        notes = {n: f"{100 * float(s.sum()) / mass:.2g}% of score" for n, s in scores.items()}
    units = sum(len(v) for v in chosen.values())
    spent = sum(sizes[n] * len(v) for n, v in chosen.items())
    left = budget - need - spent
    parts = " + ".join(w for w, on in (("classifier", opts.head), ("norm", opts.norm)) if on) or "nothing whole"
    lines = [f"auto: budget {budget:,} = {parts} {need:,} + {units:,} {opts.unit}s by {opts.score} score "
             f"{spent:,} (in {len(chosen)} of {len(layers)} layers) + {left:,} unspent (no unchosen "
             f"{opts.unit} fits){how}"]
    silent = [n for n, s in scores.items() if opts.score != "random" and float(s.sum()) == 0.0]
    if silent:  # they can only get units the others leave over: say why that may be
        lines.append(f"auto: {len(silent)} of {len(layers)} layers got no gradient at all (e.g. {silent[0]}); from "
                     "random init, timm's zero_init_last silences residual branches until their last norm scale "
                     "moves (model.kwargs: {zero_init_last: false} avoids it)")
    return notes, lines
