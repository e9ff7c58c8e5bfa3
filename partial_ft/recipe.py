"""Recipes: YAML -> typed, validated dataclasses, with `section.key=value` overrides.

A recipe is plain data. It never names code to import; unknown keys are refused with a suggestion;
the resolved recipe (every default filled in) is saved with each run.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import strategies  # the registry validates its own node
from . import yamlsafe
from .coerce import coerce
from .errors import UserError, did_you_mean
from .overrides import ALL_SECTIONS, apply_overrides  # noqa: F401  (apply_overrides: advise's recipes)
from .sections import SECTIONS, DataCfg, ModelCfg, OutputCfg, TrainCfg, refuse


@dataclass
class Recipe:
    """A whole, validated recipe. `strategy` stays a plain node: the strategy registry validates it."""

    name: str = "recipe"
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    strategy: Any = field(default_factory=lambda: {"name": "full"})
    train: TrainCfg = field(default_factory=TrainCfg)
    output: OutputCfg = field(default_factory=OutputCfg)

    @property
    def run_dir(self) -> Path:
        """The run folder: output.dir, or runs/<recipe name>."""
        return Path(self.output.dir).expanduser() if self.output.dir else Path("runs") / self.name

    def to_dict(self) -> dict:
        """The resolved recipe as plain data, in section order (what recipe.yaml in a run holds)."""
        out = {s: dataclasses.asdict(getattr(self, s)) for s in ("model", "data")}
        out["strategy"] = copy.deepcopy(self.strategy)
        out.update({s: dataclasses.asdict(getattr(self, s)) for s in ("train", "output")})
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self, here: bool = False) -> None:
        """Each section validates itself, in recipe order (the strategy node: its registry, when parsed), then
        the keys that only mean something together. `here` (before a run): also what this machine decides:
        timm's model, optimizer and scheduler names, installed trackers, how many workers it can start.
        (output.dir: whether the folder can be used is rundir.check_folder's, on disk.)"""
        together = _loop_checks(self)
        self.model.validate(here)
        self.data.validate(channels=self.model.kwargs.get("in_chans", 3), here=here)
        self.train.validate(here)
        refuse(together)


# keys that may change between a run and its resumption (or a sweep's rerun): they do not change the numbers
RESUME_MAY_DIFFER = {"train.progress", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                     "train.nan_policy", "train.log_with"}


def differences(old: Recipe, new: Recipe) -> list[str]:
    """The `section.key`s (and `strategy`) in which two recipes describe different runs: the output section
    names a folder, not a run, and RESUME_MAY_DIFFER do not change the numbers."""
    a, b = _flat(old.to_dict()), _flat(new.to_dict())
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in RESUME_MAY_DIFFER)


def _flat(resolved: dict) -> dict[str, Any]:
    """{'train.lr': 0.001, ..., 'strategy': {...}} without the output section."""
    out: dict[str, Any] = {}
    for section, node in resolved.items():
        if section == "strategy" or not isinstance(node, dict):
            out[section] = node
        elif section != "output":
            out.update({f"{section}.{key}": value for key, value in node.items()})
    return out


# --------------------------------------------------------------------------------------------
# loading


def load(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a recipe file, apply `section.key=value` overrides, validate everything."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe file not found: {path}")
    raw = yamlsafe.load_file(path, "recipe") or {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe must be a mapping of sections {ALL_SECTIONS}")
    raw = apply_overrides(raw, overrides)
    return from_dict(raw, name=path.stem)


def from_dict(raw: dict, name: str = "recipe") -> Recipe:
    """Build a validated Recipe from plain data (as read from YAML)."""
    for section in raw:
        if section not in ALL_SECTIONS:
            raise UserError(f"unknown recipe section '{section}'{did_you_mean(section, ALL_SECTIONS)}")
    recipe = Recipe(name=name)
    for section, cls in SECTIONS.items():
        node = raw.get(section) or {}
        if not isinstance(node, dict):
            raise UserError(f"recipe section '{section}' must be a mapping, got {type(node).__name__}")
        setattr(recipe, section, _build_section(section, cls, node))
    if "strategy" in raw and raw["strategy"] is not None:
        recipe.strategy = raw["strategy"]
    recipe.strategy = strategies.normalize_spec(recipe.strategy)
    recipe.validate()
    return recipe


def _build_section(section: str, cls: type, node: dict) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in node.items():
        if key not in names:
            hint = did_you_mean(key, names) or did_you_mean(f"{section}.{key}", all_keys())
            raise UserError(f"unknown key '{section}.{key}'{hint}")
        values[key] = coerce(value, hints[key], f"{section}.{key}")
    return cls(**values)


def all_keys() -> list[str]:
    """Every `section.key` of the recipe schema (the strategy section aside: the registry owns it)."""
    return [f"{s}.{f.name}" for s, c in SECTIONS.items() for f in dataclasses.fields(c)]


def loop_features(r: Recipe) -> list[str]:
    """The recipe keys on that act on training steps, which the exact solver (no steps) cannot honour."""
    d, t = r.data, r.train
    return [key for key, on in (("data.mixup", d.mixup > 0), ("data.cutmix", d.cutmix > 0), ("train.ema", t.ema),
                                ("train.layer_decay", t.layer_decay is not None), ("train.keep: best", t.keep == "best"))
            if on]


def _loop_checks(r: Recipe) -> list[tuple[bool, str]]:
    """Keys that only mean something together: the best epoch on a carve-out, step extras with steps."""
    features = loop_features(r)
    return [
        (r.train.keep != "best" or r.data.tune_fraction is not None,
         "train.keep: best picks the epoch by its validation top-1, so it needs validation carved out of train "
         "(data.tune_fraction); on the real validation split it would report a peeked number"),
        (r.train.solver != "exact" or not features,
         f"train.solver: exact solves the classifier in one go, with no steps to apply {', '.join(features)} to "
         "(set train.solver: loop or auto)"),
        (r.train.cache_features != "on" or not (r.data.mixup > 0 or r.data.cutmix > 0),
         "train.cache_features: on cannot mix images (data.mixup / data.cutmix): cached features are computed once "
         "from unmixed images (set cache_features: auto or off)"),
    ]
