"""Grid files for `python -m partial_ft sweep`: read, validate like recipes, expand into configurations.

A grid is plain YAML with these keys (any other key is an error with a suggestion):

    seeds: [0, 1, 2]                       # final runs per configuration
    overrides: [train.epochs=4]            # applied to every run
    budget: 0.02                           # optional: size every tunable strategy to 2% of the weights
    strategies: [{name: full}, {name: filters, grid: {fraction: [0.01, 0.1]}}]
                                           # an entry's `overrides: [key=value, ...]` apply to its runs only
    tune: {train.lr: [0.001, 0.003]}       # optional: candidates, chosen per configuration on a carve-out;
                                           # or a range: {train.lr: {low: 1e-4, high: 0.3, log: true}}
    search: {trials: 8, sampler: tpe, pruner: halving, min_epochs: 1, seed: 0}   # how (see search.py)
    tune_fraction: 0.2                     # the carve-out of train the tuning validates on
    datasets: [{name: digits, overrides: [data.dataset=digits]}]        # optional suite axes
    models: [{name: resnet18, overrides: [model.name=resnet18]}]
    controls: {name: filters, select: random, layers: all}   # optional: a random selection of the same
                                                             # learned count next to each strategy
"""
from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .. import recipe as recipes
from .. import yamlsafe
from ..errors import UserError, did_you_mean
from ..strategies.registry import parse_options, parse_spec
from ..strategies.types import describe
from .search import Range, Search, parse_search, parse_tune

KEYS = ("seeds", "overrides", "budget", "strategies", "tune", "search", "tune_fraction", "datasets", "models",
        "controls")
AXIS_KEYS = ("name", "overrides")


@dataclass
class Axis:
    """One dataset or model of a suite: its name (a column of results.csv) and its recipe overrides."""

    name: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class Grid:
    """A validated grid file."""

    strategies: list[dict]
    strategy_overrides: list[list[str]] = field(default_factory=list)  # per strategy (its entry's `overrides`)
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: list[str] = field(default_factory=list)
    budget: Optional[float] = None
    tune: dict[str, list | Range] = field(default_factory=dict)
    search: Search = field(default_factory=Search)
    tune_fraction: float = 0.2
    datasets: list[Axis] = field(default_factory=list)
    models: list[Axis] = field(default_factory=list)
    controls: Optional[dict] = None

    def own(self) -> list[list[str]]:
        """Each strategy's own overrides (none for each where the grid was built without them)."""
        return self.strategy_overrides or [[] for _ in self.strategies]


@dataclass
class Config:
    """One configuration of the sweep: a strategy on a dataset and model (suite axes may be None)."""

    spec: dict
    dataset: Optional[Axis] = None
    model: Optional[Axis] = None
    control_for: Optional[str] = None  # a random control: the label of the strategy it matches
    own: list[str] = field(default_factory=list)  # the strategy entry's own recipe overrides

    @property
    def label(self) -> str:
        return config_label(self.spec, self.own)

    def where(self) -> str:
        """The configuration in words, for messages."""
        parts = [f"dataset {self.dataset.name}" if self.dataset else "", f"model {self.model.name}" if self.model else ""]
        return " ".join([self.label, *(p for p in parts if p)])

    def folder(self) -> Path:
        """Its runs' folder, relative to the sweep's (dataset/model levels only in suites)."""
        return Path(*[a.name for a in (self.dataset, self.model) if a] or ["."])

    def overrides(self) -> list[str]:
        return [*(self.dataset.overrides if self.dataset else []), *(self.model.overrides if self.model else []),
                *self.own]


def label(spec: dict) -> str:
    """A readable, stable label (strategy name + options that differ from their defaults)."""
    return describe(parse_options(spec))


def config_label(spec: dict, own: list[str] = ()) -> str:
    """A configuration's label: the strategy's, and its entry's own overrides (so that one strategy with
    different overrides gets different run folders and rows), e.g. `head [train.solver=exact]`."""
    return label(spec) + (f" [{', '.join(own)}]" if own else "")


def slug(text: str) -> str:
    """A folder-name form of a label or candidate."""
    text = text.replace("(", "_").replace(")", "").replace(", ", "_").replace("=", "-")
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", text)


def expand(strategies: list[dict]) -> list[dict]:
    """Each spec's `grid` mapping -> one spec per combination of its values."""
    out = []
    for spec in strategies:
        grid = spec.get("grid") or {}
        base = {k: v for k, v in spec.items() if k != "grid"}
        keys = list(grid)
        for values in itertools.product(*(grid[k] if isinstance(grid[k], list) else [grid[k]] for k in keys)):
            out.append({**base, **dict(zip(keys, values))})
    return out


def candidates(tune: dict[str, list]) -> list[dict[str, Any]]:
    """The cartesian product of the tuned keys' values, in the order written (lists only)."""
    keys = list(tune)
    return [dict(zip(keys, values)) for values in itertools.product(*(tune[k] for k in keys))]


def candidate_overrides(candidate: dict[str, Any]) -> list[str]:
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in candidate.items()]


def candidate_id(candidate: dict[str, Any]) -> str:
    return "_".join(slug(f"{k.split('.')[-1]}={v}") for k, v in candidate.items())


def load(path: str | Path) -> Grid:
    """Read and check a grid file; every mistake is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"grid file not found: {path}")
    raw = yamlsafe.load_file(path, "grid file") or {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a grid must be a mapping with keys {list(KEYS)}")
    try:
        return _build(raw)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def from_dict(raw: dict) -> Grid:
    """A grid from plain data (as a grid file holds), checked as `load` checks a file."""
    if not isinstance(raw, dict):
        raise UserError(f"a grid must be a mapping with keys {list(KEYS)}")
    return _build(raw)


def _build(raw: dict) -> Grid:
    for key in raw:
        if key not in KEYS:
            raise UserError(f"unknown grid key '{key}'{did_you_mean(key, KEYS)}")
    if not isinstance(raw.get("strategies"), list) or not raw["strategies"]:
        raise UserError("'strategies' must be a non-empty list of strategy specs")
    specs, own = _strategies(raw["strategies"])
    grid = Grid(strategies=specs, strategy_overrides=own, seeds=_list(raw.get("seeds", [0]), "seeds", int),
                overrides=_list(raw.get("overrides", []), "overrides", str), budget=raw.get("budget"),
                tune_fraction=raw.get("tune_fraction", 0.2), controls=raw.get("controls"))
    if not grid.seeds:
        raise UserError("'seeds' must list at least one seed")
    budget = grid.budget
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not math.isfinite(budget) or budget <= 0):
        raise UserError(f"'budget' must be a positive finite number, got {budget!r}")
    if not isinstance(grid.tune_fraction, float) or not 0 < grid.tune_fraction < 1:
        raise UserError(f"'tune_fraction' must be a number in (0, 1), got {grid.tune_fraction!r}")
    tune = _mapping(raw.get("tune") or {}, "'tune'")
    for key in tune:
        _check_key(key, "tune")
    grid.tune = parse_tune(tune)
    grid.search = parse_search(raw.get("search"), grid.tune)
    if grid.controls is not None:
        parse_spec(_mapping(grid.controls, "'controls'"))
    grid.datasets, grid.models = _axes(raw.get("datasets"), "datasets"), _axes(raw.get("models"), "models")
    for override in [*grid.overrides, *(o for a in grid.datasets + grid.models for o in a.overrides),
                     *(o for entry in own for o in entry)]:
        _check_key(override.split("=", 1)[0], "override")
    return grid


def _strategies(entries: list) -> tuple[list[dict], list[list[str]]]:
    """The strategy specs (each entry's `grid` expanded) and, per spec, its entry's own overrides."""
    specs, own = [], []
    for entry in entries:
        entry = _mapping(entry, "a strategy")
        extra = _list(entry.get("overrides", []), f"strategies: {entry.get('name')}: overrides", str)
        for spec in expand([{k: v for k, v in entry.items() if k != "overrides"}]):
            parse_spec(spec)  # the registry's own validation: unknown strategy or option, with suggestions
            specs.append(spec)
            own.append(list(extra))
    return specs, own


def _mapping(node: Any, what: str) -> dict:
    if not isinstance(node, dict):
        raise UserError(f"{what} must be a mapping, got {node!r}")
    return node


def _list(node: Any, what: str, kind: type) -> list:
    if not isinstance(node, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in node):
        raise UserError(f"'{what}' must be a list of {kind.__name__}s, got {node!r}")
    return list(node)


def _axes(node: Any, what: str) -> list[Axis]:
    if node is None:
        return []
    if not isinstance(node, list) or not node:
        raise UserError(f"'{what}' must be a non-empty list of {{name: NAME, overrides: [key=value, ...]}}")
    axes = []
    for item in node:
        item = _mapping(item, f"an entry of '{what}'")
        for key in item:
            if key not in AXIS_KEYS:
                raise UserError(f"{what}: unknown key '{key}'{did_you_mean(key, AXIS_KEYS)}")
        if not isinstance(item.get("name"), str) or slug(item["name"]) != item["name"] or \
                item["name"].startswith("."):  # a plain folder name: never '..' (outside --out) nor hidden
            raise UserError(f"{what}: each entry needs a plain folder name (letters, digits, '_', '-', '.', not "
                            f"starting with '.'), got "
                            f"{item.get('name')!r}")
        axes.append(Axis(item["name"], _list(item.get("overrides", []), f"{what}: {item['name']}: overrides", str)))
    names = [a.name for a in axes]
    if len(set(names)) != len(names):
        raise UserError(f"'{what}' names must differ: {names}")
    return axes


def _check_key(dotted: str, what: str) -> None:
    """A `section.key` of the recipe schema (the strategy section is the registry's, set by `strategies`)."""
    keys = recipes.all_keys()
    if dotted.startswith("strategy."):
        raise UserError(f"{what} '{dotted}': strategies are set by 'strategies' (and their 'grid')")
    if ".".join(dotted.split(".")[:2]) not in keys:  # deeper: inside a mapping key (model.kwargs.x)
        raise UserError(f"{what} '{dotted}': unknown recipe key{did_you_mean(dotted, keys)}")


def configurations(grid: Grid, specs: Optional[list[dict]] = None) -> list[Config]:
    """Every (dataset, model, strategy) of the grid, datasets outermost."""
    return [Config(copy.deepcopy(spec), dataset, model, own=list(extra))
            for dataset in grid.datasets or [None] for model in grid.models or [None]
            for spec, extra in zip(specs if specs is not None else grid.strategies, grid.own())]
