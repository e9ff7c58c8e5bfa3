"""Coercing plain data (as read from YAML or the command line) into typed values: the one leaf that recipes
and strategy options both validate through."""
from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal, Union

from .errors import UserError, did_you_mean, shorten

_BOOL_WORDS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}


class NotFinite(UserError):
    """NaN or infinity where a number is expected."""


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
        for precise in (e for e in errors if isinstance(e, NotFinite)):  # a number, but not finite: say that
            raise precise  # (not "expected a number or null")
        raise UserError(f"{where}: expected {_describe(hint)}, got {shorten(value)}")
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads no/off/yes/on as booleans
            spelled = [a for a in args if isinstance(a, str) and a in _BOOL_WORDS[value]]
            if spelled:
                return spelled[0]
        if value in args:
            return value
        hint_ = did_you_mean(value, args) if len(str(value)) <= 80 else ""
        raise UserError(f"{where}: must be one of {list(args)}, got {shorten(value)}{hint_}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {shorten(value)}")
        return [coerce(v, args[0], where) for v in value] if args else list(value)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {shorten(value)}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        number = _number(value)
        if number is not None:
            if not math.isfinite(number):  # .nan / .inf / 1e999: no float option means anything there
                raise NotFinite(f"{where}: must be a finite number, got {shorten(value)}")
            return number
    elif hint is str:
        if isinstance(value, str):
            return value
    raise UserError(f"{where}: expected {_describe(hint)}, got {shorten(value)}")


def _number(value: Any) -> float | None:
    """A YAML number as a float (inf for an int too large for one), or None when it is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(value) if abs(value) < 2**1023 else math.inf
    if isinstance(value, float):
        return value
    if isinstance(value, str) and len(value) <= 100:  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            return None
    return None


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
