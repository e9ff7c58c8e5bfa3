"""The strategy registry: a strategy is one registered function (model, options, context) -> Selection,
looked up by name, its options parsed and validated from a recipe node.

Only this package knows strategy names. Adding a strategy: one module with an options dataclass and a
function decorated with @register, one import line in strategies/__init__.py, one recipe, one
test-table row.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from ..coerce import coerce
from ..errors import UserError, did_you_mean
from .context import Context
from .types import SHARED_OPTIONS, Options, Selection


StrategyFn = Callable[[nn.Module, Any, Context], Selection]


@dataclass
class Strategy:
    """A registered strategy: its name, function, options class and aliases."""

    name: str
    fn: StrategyFn
    options: type
    aliases: tuple[str, ...] = ()
    size_option: Optional[str] = None  # a float option in (0, 1] or an int option >= 1 that sets how much learns
    budget_option: Optional[str] = None  # an option that takes the parameter budget itself (fraction or count)

    @property
    def summary(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""

    def option_defaults(self) -> dict[str, Any]:
        """Each option (but name) with its default value."""
        return {f.name: _default(f) for f in dataclasses.fields(self.options) if f.name != "name"}

    def option_help(self) -> dict[str, str]:
        """Each option (but name) with its help text (the options dataclass's field metadata)."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(self.options) if f.name != "name"}


_REGISTRY: dict[str, Strategy] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, options: type = Options, aliases: tuple[str, ...] = (), size_option: Optional[str] = None,
             budget_option: Optional[str] = None) -> Callable[[StrategyFn], StrategyFn]:
    """Decorator: register `fn` as strategy `name` (duplicates refused, as timm does for models).
    `size_option` names the option (a float in (0, 1] or an int >= 1) that scales how much learns, if there
    is one (budget.size_to_budget bisects it);
    `budget_option` the option that takes a parameter budget directly (budget matching sets it)."""

    def wrap(fn: StrategyFn) -> StrategyFn:
        for key in (name, *aliases):
            if key in _REGISTRY or key in _ALIASES:
                raise ValueError(f"strategy '{key}' is already registered")
        _REGISTRY[name] = Strategy(name, fn, options, tuple(aliases), size_option, budget_option)
        _ALIASES.update({a: name for a in aliases})
        return fn

    return wrap


_EXPORT_HOOKS: list[Callable[[nn.Module], nn.Module]] = []


def register_export_hook(fn: Callable[[nn.Module], nn.Module]) -> Callable[[nn.Module], nn.Module]:
    """Decorator: `fn(model) -> model` turns a strategy's own modules back into plain timm ones for
    export (e.g. merging adapters); it returns the model unchanged when it has none of them."""
    _EXPORT_HOOKS.append(fn)
    return fn


def for_export(model: nn.Module) -> nn.Module:
    """The model with every strategy's export hook applied (a copy when any hook changes something)."""
    for hook in _EXPORT_HOOKS:
        model = hook(model)
    return model


def get(name: str) -> Strategy:
    """The registered strategy called `name` (or an alias of it)."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        known = sorted(_REGISTRY) + sorted(_ALIASES)
        raise UserError(f"unknown strategy '{name}'{did_you_mean(name, known)}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def list_strategies() -> list[Strategy]:
    """Every registered strategy, in registration order."""
    return list(_REGISTRY.values())


def parse_options(node: Any) -> Options:
    """Validate one strategy mapping and return its typed options (defaults filled in)."""
    if isinstance(node, str):
        node = {"name": node}
    if not isinstance(node, dict):
        raise UserError(f"strategy must be a mapping with a 'name' (or a list of them), got {node!r}")
    if "name" not in node:
        raise UserError(f"strategy needs a 'name'; known: {', '.join(sorted(_REGISTRY))}")
    strategy = get(str(node["name"]))
    hints = typing.get_type_hints(strategy.options)
    names = [f.name for f in dataclasses.fields(strategy.options)]
    values = {"name": strategy.name}
    for key, value in node.items():
        if key == "name":
            continue
        if key not in names:
            raise UserError(f"unknown option 'strategy.{key}' for strategy '{strategy.name}'"
                            f"{did_you_mean(key, names)}; its options: {', '.join(n for n in names if n != 'name')}")
        values[key] = coerce(value, hints[key], f"strategy.{key}")
    options = strategy.options(**values)
    options.validate()
    return options


def parse_spec(spec: Any) -> list[Options]:
    """A strategy node (mapping, name, or list of them) -> list of typed options."""
    nodes = spec if isinstance(spec, list) else [spec]
    if not nodes:
        raise UserError("strategy list is empty")
    for key in SHARED_OPTIONS:  # options that act on the whole model cannot differ between the parts
        given = {repr(n[key]) for n in nodes if isinstance(n, dict) and key in n}
        if len(given) > 1:
            raise UserError(f"the composed strategies disagree on '{key}' ({', '.join(sorted(given))}): it applies to "
                            "the whole model, so give it once or the same everywhere")
    return [parse_options(n) for n in nodes]


def normalize_spec(spec: Any) -> Any:
    """Validate a strategy node and return it as plain data with every default filled in."""
    resolved = [dataclasses.asdict(o) for o in parse_spec(spec)]
    return resolved if isinstance(spec, list) else resolved[0]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None
