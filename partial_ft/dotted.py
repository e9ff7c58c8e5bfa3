"""Dotted `section.key=value` overrides of a raw recipe (torchtune's CLI overrides): values are YAML,
list items are addressed by index (`strategy.0.index=last`)."""
from __future__ import annotations

import copy
from typing import Any

from . import yamlsafe
from .errors import UserError, did_you_mean


def apply(raw: dict, overrides: list[str], sections: list[str]) -> dict:
    """Apply `a.b.c=value` strings (values parsed as YAML) to a raw recipe whose top-level keys are
    `sections`; returns a new dict."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' must look like section.key=value")
        dotted, text = item.split("=", 1)
        keys = dotted.strip().split(".")
        if len(keys) < 2 or not all(keys):
            raise UserError(f"override '{item}' must name section.key (e.g. train.epochs=3)")
        if keys[0] not in sections:
            raise UserError(f"override '{item}': unknown section '{keys[0]}'{did_you_mean(keys[0], sections)}")
        try:
            value = yamlsafe.load(text, f"override '{dotted.strip()}'") if text.strip() else None
        except yamlsafe.Refused:
            raise  # a bomb or a duplicate key, never taken as a plain string
        except UserError:
            value = text  # an unparsable value is taken as a plain string
        _set_path(raw, keys, value, item)
    return raw


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
