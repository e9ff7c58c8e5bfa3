"""Finding the parts of a timm model: its classifier, norm layers, weight layers and blocks (what strategies
select from, and what loading a checkpoint into a new classifier must tell apart)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from .errors import UserError
from .normstats import FrozenStats
from .partial import is_partial

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
               nn.modules.instancenorm._InstanceNorm)


def classifier_params(model: nn.Module) -> set[str]:
    """Names of the classifier's parameters (timm's get_classifier(); else the last Linear)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
        for name, module in model.named_modules():
            if module is head:
                return {f"{name}.{p}" if name else p for p, _ in head.named_parameters()}
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return set()
    return {f"{linears[-1]}.{p}" for p, _ in model.get_submodule(linears[-1]).named_parameters()}


def is_norm(module: nn.Module) -> bool:
    """BatchNorm / GroupNorm / LayerNorm and their timm subclasses (BatchNormAct2d, LayerNorm2d, RmsNorm...)."""
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith(("Norm", "Norm1d", "Norm2d", "Norm3d"))


def norm_params(model: nn.Module) -> set[str]:
    """Names of the normalisation layers' affine parameters."""
    return {f"{name}.{p}" for name, m in model.named_modules() if is_norm(m)
            for p, _ in m.named_parameters(recurse=False)}


def silent_norms(model: nn.Module) -> list[str]:
    """Normalisation layers whose scale is all zero and stays fixed. Whatever feeds them, they output a
    constant, so the branch they end neither contributes nor gets a gradient: timm's `zero_init_last`
    residual branches at random init, when a strategy keeps the norm layers fixed."""
    return [name for name, m in model.named_modules()
            if is_norm(m) and isinstance(getattr(m, "weight", None), nn.Parameter)
            and not m.weight.requires_grad and not m.weight.detach().any()]


def bias_params(model: nn.Module) -> set[str]:
    """Names of every bias parameter."""
    return {name for name, _ in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"}


def weight_layers(model: nn.Module, kind: str) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of conv and/or linear layers with a weight: kind is conv | linear | all."""
    for name, m in model.named_modules():
        if not isinstance(getattr(m, "weight", None), nn.Parameter):
            continue
        conv = isinstance(m, nn.modules.conv._ConvNd)
        linear = isinstance(m, nn.Linear)
        if (conv and kind in ("conv", "all")) or (linear and kind in ("linear", "all")):
            yield name, m


def blocks(model: nn.Module, coarse: bool = True) -> list[list[str]]:
    """The model's blocks as timm groups them (stem first), each a list of parameter names; the
    classifier is left out (the `head` option covers it) and so are groups left empty by that."""
    from timm.models import group_parameters

    if not hasattr(model, "group_matcher"):
        raise UserError(f"{type(model).__name__} has no timm group_matcher, so it has no blocks")
    head = classifier_params(model)
    groups = group_parameters(model, model.group_matcher(coarse=coarse))
    out = [[n for n in names if n not in head] for _, names in sorted(groups.items())]
    return [names for names in out if names]


@dataclass
class LayerRow:
    """One row of the per-layer table of a strategy's plan."""

    name: str
    kind: str
    learned: int
    total: int
    how: str


def layer_rows(model: nn.Module, notes: dict[str, str], freeze_stats: bool = False) -> list[LayerRow]:
    """The per-layer table: each module with parameters of its own, learned of total and how (a slice, whole,
    fixed), with the strategies' `notes`. `freeze_stats`: norm_stats: freeze is about to fix every BatchNorm's
    statistics (as are those fixed already)."""
    rows = []
    for name, m in model.named_modules():
        own = list(m.named_parameters(recurse=False))
        if not own:
            continue
        learned = sum(p.numel() for _, p in own if p.requires_grad)
        total = sum(p.numel() for _, p in own)
        if is_partial(m):
            total += m.weight_fixed.numel()
            k = m.weight_learned.shape[m.partial_dim]
            size = k + m.weight_fixed.shape[m.partial_dim]
            how = f"{k}/{size} {m.partial_axis}"
        elif learned == total:
            how = "learned"
        elif learned == 0:
            how = "fixed"
        else:
            how = "learned: " + ", ".join(p for p, t in own if t.requires_grad)
        if isinstance(m, FrozenStats) or (freeze_stats and isinstance(m, nn.modules.batchnorm._BatchNorm)):
            how += " (stats frozen)"
        if name in notes:
            how += f" ({notes[name]})"
        rows.append(LayerRow(name or "<model>", type(m).__name__, learned, total, how))
    return rows
