"""The strategy registry and `apply_strategy`, the one entry point the rest of partial_ft uses."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Optional

from torch import nn

# one line per strategy module: importing it registers its strategies
from . import auto, basic, bias, block, filters, lora, norm  # noqa: F401
from ..layers import LayerRow, silent_norms
from .context import Context
from .plan import Plan, build, merge
from .registry import Strategy, for_export, get, list_strategies, normalize_spec, parse_spec, register
from .scoring import Gradients
from .types import Options, Selection

__all__ = ["apply_strategy", "list_strategies", "normalize_spec", "register", "Plan", "LayerRow", "Options",
           "Selection", "Strategy", "Context", "Gradients", "for_export", "silent_norms"]


def apply_strategy(model: nn.Module, spec: Any, *, seed: int = 0,
                   init_model: Optional[Callable[[], nn.Module]] = None,
                   gradients: Optional[Gradients] = None) -> Plan:
    """Make `model` learn only what `spec` (the recipe's strategy node: a mapping, or a list of them
    whose learned sets are united) selects. Afterwards exactly the learned parameters require grad.

    `seed` drives random selections and random fixed parts; `init_model`, when given, builds a fresh
    model of the same architecture whose init the `fixed: random` option re-draws from; `gradients`
    is how strategies that choose from the gradient signal draw training gradients. `plan.spec` is
    `spec` with such choices resolved: applying it again rebuilds the same plan without gradients.
    """
    options = parse_spec(spec)
    total = sum(p.numel() for p in model.parameters())  # of the model as given, before any adapters
    ctx = Context(seed=seed, init_model=init_model, gradients=gradients)
    selections, resolved = [], []
    for opts in options:
        strategy = get(opts.name)
        sel = strategy.fn(model, opts, ctx)
        selections.append(sel)
        resolved.append(dataclasses.asdict(dataclasses.replace(opts, **sel.resolved)))
    plan = build(model, options, merge(selections), total)
    plan.spec = resolved if isinstance(spec, list) else resolved[0]
    plan.scoring_seconds = ctx.scoring_seconds
    return plan
