"""Turning strategy selections into a model whose learned parameters are exactly those that require
grad, and a Plan that reports what learns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..layers import LayerRow, classifier_params, layer_rows, norm_params
from ..normstats import freeze_norm_stats
from ..partial import axis_size, make_partial
from .types import Options, PartialSpec, Selection, describe


@dataclass
class Plan:
    """What a strategy made learnable: counts, the per-layer table, and the resolved options."""

    options: list[Options]
    learned: int
    total: int
    rows: list[LayerRow] = field(default_factory=list)
    learned_names: list[str] = field(default_factory=list)
    remarks: list[str] = field(default_factory=list)  # what strategies chose from data, and why
    spec: Any = None  # the strategy node with data-driven choices resolved: rebuilds this plan without data
    scoring_seconds: float = 0.0  # time spent drawing gradients to choose what learns

    @property
    def fraction(self) -> float:
        return self.learned / self.total if self.total else 0.0

    @property
    def label(self) -> str:
        """e.g. 'filters(fraction=0.1, fixed=random)' or 'block(index=middle) + bias'."""
        return " + ".join(describe(o) for o in self.options)

    def table(self) -> str:
        """The per-layer table as aligned text."""
        width = max([len(r.name) for r in self.rows] + [5])
        lines = [f"{'layer':<{width}}  {'type':<16} {'learned':>10} {'total':>10}  how"]
        for r in self.rows:
            lines.append(f"{r.name:<{width}}  {r.kind[:16]:<16} {r.learned:>10,} {r.total:>10,}  {r.how}")
        lines.append(f"{'total':<{width}}  {'':<16} {self.learned:>10,} {self.total:>10,}  "
                     f"{100 * self.fraction:.3g}% learned")
        return "\n".join(lines + self.remarks)


def merge(selections: list[Selection]) -> Selection:
    """Union of selections: whole beats partial; two partial slices of one weight must agree on axis."""
    out = Selection()
    for sel in selections:
        out.whole |= sel.whole
        out.notes.update(sel.notes)
        out.remarks += sel.remarks
        for name, spec in sel.partial.items():
            if name in out.partial and out.partial[name].axis != spec.axis:
                raise UserError(f"strategies slice {name} along both {out.partial[name].axis} and {spec.axis}")
            if name in out.partial:
                union = torch.unique(torch.cat([out.partial[name].learned_index, spec.learned_index]))
                out.partial[name] = PartialSpec(spec.axis, union, out.partial[name].fixed_source)
            else:
                out.partial[name] = spec
    return out


def build(model: nn.Module, options: list[Options], selection: Selection, total: int) -> Plan:
    """Freeze everything, then make the selection learnable (partial weights split in place), with the
    classifier and the norm layers where the options ask for them. `total` is the model's parameter count
    before any strategy added modules (e.g. adapters). The per-layer table is taken before `norm_stats:
    freeze` is applied, and says which statistics it freezes."""
    for opts in options:
        if opts.head:
            selection.whole |= classifier_params(model)
        if opts.norm:
            selection.whole |= norm_params(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, spec in selection.partial.items():
        if f"{name}.weight" in selection.whole:
            continue  # learned whole by another strategy of the list
        module = model.get_submodule(name)
        if spec.learned_index.numel() >= axis_size(module.weight.shape, spec.axis):
            selection.whole.add(f"{name}.weight")
            continue
        make_partial(module, spec.axis, spec.learned_index, spec.fixed_source)
        module.weight_learned.requires_grad_(True)
    params = dict(model.named_parameters())
    for name in selection.whole:
        if name in params:
            params[name].requires_grad_(True)
    freeze = any(o.norm_stats == "freeze" for o in options)
    rows = layer_rows(model, selection.notes, freeze_stats=freeze)
    learned_names = [n for n, p in model.named_parameters() if p.requires_grad]
    learned = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if learned == 0:
        raise UserError("this strategy learns no parameters (did you set head: false?)")
    if freeze:
        freeze_norm_stats(model)
    return Plan(options, learned, total, rows, learned_names, list(selection.remarks))
