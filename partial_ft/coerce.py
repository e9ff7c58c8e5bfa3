"""Coercing plain data (as read from YAML or the command line) into typed values: the one leaf that recipes
and strategy options both validate through."""
from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union

from .errors import UserError, did_you_mean

_BOOL_WORDS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type hint, converting only where lossless (int -> float, 3 -> [3])."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, where)
            except UserError as e:
                errors.append(e)
        raise UserError(f"{where}: expected {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads no/off/yes/on as booleans
            spelled = [a for a in args if isinstance(a, str) and a in _BOOL_WORDS[value]]
            if spelled:
                return spelled[0]
        if value in args:
            return value
        raise UserError(f"{where}: must be one of {list(args)}, got {value!r}{did_you_mean(value, args)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, args[0], where) for v in value] if args else list(value)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise UserError(f"{where}: expected {_describe(hint)}, got {value!r}")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}" if args else "a list"
    if hint is type(None):
        return "null"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}.get(
        hint, str(hint)
    )
