"""What a strategy takes and gives: its typed options (each with its help text, once) and the
selection it makes. Plain data, shared by the registry, the context, the plan and every strategy."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch


def option(default: Any, help: str) -> Any:
    """An option with its default and its help text (PEFT's `field(metadata={"help": ...})`): the one place
    the text lives; the `strategies` command and the docs read it from here."""
    return field(default=default, metadata={"help": help})


def recorded(help: str) -> Any:
    """An option a strategy fills in with what it chose from data (see Selection.resolved): None until
    then; left out of labels, so a run reads the same before and after its choice is recorded."""
    return field(default=None, metadata={"help": help, "recorded": True})


@dataclass
class Options:
    """Options every strategy has. Subclass it to add a strategy's own options (and defaults)."""

    name: str = option("", "the strategy")
    head: bool = option(True, "the new task's classifier learns")
    norm: bool = option(False, "normalisation layers' affine parameters learn too")
    norm_stats: Literal["update", "freeze"] = option("update", "BatchNorm running statistics: update, or keep them")

    def validate(self) -> None:
        """Raise UserError for values that are well-typed but meaningless."""


# options whose value is one for the whole model: how fixed parts start, whether BatchNorm statistics move
SHARED_OPTIONS = ("fixed", "norm_stats")


def describe(options: Options) -> str:
    """A short label: the name and the options that differ from their defaults (recorded choices left out)."""
    defaults = options.__class__(name=options.name)
    changed = [f"{f.name}={getattr(options, f.name)}" for f in dataclasses.fields(options)
               if f.name != "name" and not f.metadata.get("recorded")
               and getattr(options, f.name) != getattr(defaults, f.name)]
    return f"{options.name}({', '.join(changed)})" if changed else options.name


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
