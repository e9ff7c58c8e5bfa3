"""Command-line overrides of a raw recipe: `section.key=value` (values parsed as YAML), and the strategy
node replaced whole with `strategy=VALUE`."""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

import yaml

from . import strategies, yamlsafe
from .errors import UserError, did_you_mean

ALL_SECTIONS = ["model", "data", "strategy", "train", "output"]


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings (values parsed as YAML) to a raw recipe; returns a new dict.
    `strategy=VALUE` replaces the whole strategy node (a mapping or a list of them)."""
    raw = copy.deepcopy(raw)
    renamed = []  # (override, path to the strategy mapping) whose `name` an override changed
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' must look like section.key=value")
        dotted, text = item.split("=", 1)
        keys = dotted.strip().split(".")
        if not all(keys) or len(keys) < 2 and keys != ["strategy"]:
            raise UserError(f"override '{item}' must name section.key (e.g. train.epochs=3), or be "
                            "strategy=VALUE (the whole strategy node)")
        if keys[0] not in ALL_SECTIONS:
            raise UserError(f"override '{item}': unknown section '{keys[0]}'{did_you_mean(keys[0], ALL_SECTIONS)}")
        try:
            value = yamlsafe.load(text, f"override '{dotted.strip()}'") if text.strip() else None
        except yamlsafe.Refused:
            raise  # a bomb or a duplicate key, never taken as a plain string
        except UserError:
            value = text  # an unparsable value is taken as a plain string
        if keys == ["strategy"]:
            raw["strategy"] = value
            renamed = []  # a whole node given is taken as given
            continue
        old = _node(raw, keys[:-1])
        old_name = old.get("name") if isinstance(old, dict) else None
        _set_path(raw, keys, value, item)
        if keys[0] == "strategy" and keys[-1] == "name" and old_name is not None and old_name != value:
            renamed.append((item, keys[1:-1], old_name))
    for item, path, old_name in renamed:
        _check_renamed(raw, item, path, old_name)
    return raw


def _node(raw: Any, keys: list[str]) -> Any:
    """The value at `keys` in the raw recipe, or None where there is none."""
    for key in keys:
        if isinstance(raw, list) and key.isdigit() and int(key) < len(raw):
            raw = raw[int(key)]
        elif isinstance(raw, dict):
            raw = raw.get(key)
        else:
            return None
    return raw


def _check_renamed(raw: dict, item: str, path: list[str], old_name: Any) -> None:
    """`strategy.name=NEW` keeps the node's other options: those NEW does not have belong to the old
    strategy, which is worth one clear error (with the whole-node form) rather than 'unknown option'."""
    node = _node(raw, ["strategy", *path])
    if not isinstance(node, dict) or not isinstance(node.get("name"), str):
        return
    try:
        options = {f.name for f in dataclasses.fields(strategies.get(node["name"]).options)}
    except UserError:
        return  # an unknown name: the registry says so when the recipe is validated
    foreign = [key for key in node if key not in options]
    if foreign:
        where = "strategy" + "".join(f".{k}" for k in path)
        whole = yaml.safe_dump({"name": node["name"]}, default_flow_style=True).strip()
        raise UserError(f"override '{item}': the recipe's {where} options {', '.join(foreign)} belong to "
                        f"strategy '{old_name}', not to '{node['name']}'; give the whole node instead, e.g. "
                        f"'{where}={whole}'")


def _set_path(node: Any, keys: list[str], value: Any, item: str) -> None:
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise UserError(f"override '{item}': '{key}' is not an index of a {len(node)}-item list")
            key = int(key)
        elif isinstance(node, dict):
            if not last and node.get(key) is None:
                node[key] = {}
        else:
            raise UserError(f"override '{item}': '{keys[i - 1]}' holds a value, not a section")
        if last:
            node[key] = value
        else:
            node = node[key]
