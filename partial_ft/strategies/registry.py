"""The strategy registry: a strategy is one registered function (model, options, context) -> Selection.

Only this package knows strategy names. Adding a strategy: one module with an options dataclass and a
function decorated with @register, one import line in strategies/__init__.py, one recipe, one
test-table row.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch
from torch import nn

from ..coerce import coerce
from ..errors import UserError, did_you_mean
from .scoring import Gradients, GradientStats, gradient_stats


@dataclass
class Options:
    """Options every strategy has. Subclass it to add a strategy's own options (and defaults)."""

    name: str = ""
    head: bool = True  # the new task's classifier learns
    norm: bool = False  # normalisation layers' affine parameters learn too
    norm_stats: Literal["update", "freeze"] = "update"  # BatchNorm running statistics

    def validate(self) -> None:
        """Raise UserError for values that are well-typed but meaningless."""


@dataclass
class PartialSpec:
    """One partly learned weight: which slices learn along which axis, and the fixed part's values."""

    axis: str
    learned_index: torch.Tensor
    fixed_source: Optional[torch.Tensor] = None  # None: keep the current values


@dataclass
class Selection:
    """What a strategy chose: whole parameters (by name) and partly learned weights (by module name)."""

    whole: set[str] = field(default_factory=set)
    partial: dict[str, PartialSpec] = field(default_factory=dict)
    # what a strategy chose from data, as option values that choose the same again without the data (e.g.
    # the units `auto` selected): recorded in the delta, so loading never scores again
    resolved: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # per layer (module name), for the plan's table
    remarks: list[str] = field(default_factory=list)  # lines under the plan's table


DEFAULT_BATCHES = 8  # a scoring pass's batches when the strategy's `batches` is not set


@dataclass
class Context:
    """What strategies may need beyond the model: the seed, a factory for a fresh random init, and a
    source of training gradients (None where there is no data, e.g. when a delta is loaded)."""

    seed: int = 0
    init_model: Optional[Callable[[], nn.Module]] = None
    gradients: Optional[Gradients] = None
    scoring_seconds: float = 0.0  # time spent in scoring passes
    _fresh: dict[int, nn.Module] = field(default_factory=dict)
    _stats: dict[int, GradientStats] = field(default_factory=dict)

    def check_batches(self, batches: Optional[int], who: str) -> int:
        """How many batches a scoring pass draws: `batches` (it cannot be more than the training data
        has), or by default DEFAULT_BATCHES or every batch of smaller data."""
        available = self.gradients.available if self.gradients is not None else DEFAULT_BATCHES
        if batches is None:
            return min(DEFAULT_BATCHES, available)
        if batches > available:
            raise UserError(f"{who}: batches is {batches}, but the training data has only {available} batches; "
                            "lower it")
        return batches

    def gradient_stats(self, model: nn.Module, batches: Optional[int], who: str) -> GradientStats:
        """Σ g² and Σ |g| per parameter over `batches` training batches (summed across processes); one
        scoring pass per batch count, shared by every strategy of a list that asks for it."""
        if self.gradients is None:
            raise UserError(f"{who} chooses from training gradients, but none were given "
                            "(apply_strategy(..., gradients=...); the training run passes them)")
        batches = self.check_batches(batches, who)
        if batches not in self._stats:
            self._stats[batches] = gradient_stats(model, self.gradients, batches)
            self.scoring_seconds += self._stats[batches].seconds
        return self._stats[batches]

    def random_weight(self, module_name: str, module: nn.Module, seed: Optional[int] = None) -> torch.Tensor:
        """The weight `module` would have at random init: from a fresh model built the same way
        (the architecture's own init), else from the layer's reset_parameters(); seeded either way."""
        seed = self.seed if seed is None else seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.init_model is not None:
                if seed not in self._fresh:
                    self._fresh[seed] = self.init_model()
                return self._fresh[seed].get_submodule(module_name).weight.detach()
            clone = copy.deepcopy(module)
            clone.reset_parameters()
            return clone.weight.detach()


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


# options whose value is one for the whole model: how fixed parts start, whether BatchNorm statistics move
SHARED_OPTIONS = ("fixed", "norm_stats")


def normalize_spec(spec: Any) -> Any:
    """Validate a strategy node and return it as plain data with every default filled in."""
    resolved = [dataclasses.asdict(o) for o in parse_spec(spec)]
    return resolved if isinstance(spec, list) else resolved[0]


def recorded() -> Any:
    """An option a strategy fills in with what it chose from data (see Selection.resolved): None until
    then; left out of labels, so a run reads the same before and after its choice is recorded."""
    return field(default=None, metadata={"recorded": True})


def describe(options: Options) -> str:
    """A short label: the name and the options that differ from their defaults (recorded choices left out)."""
    defaults = options.__class__(name=options.name)
    changed = [f"{f.name}={getattr(options, f.name)}" for f in dataclasses.fields(options)
               if f.name != "name" and not f.metadata.get("recorded")
               and getattr(options, f.name) != getattr(defaults, f.name)]
    return f"{options.name}({', '.join(changed)})" if changed else options.name


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None
