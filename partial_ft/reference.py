"""The reference tables of the docs, generated from the code so that they cannot drift: every recipe key
with its default and meaning (the sections' field metadata), every strategy with its options.

docs/hooks.py (a MkDocs hook) puts them where a page says `<!-- generated: recipe-keys SECTION -->`,
`<!-- generated: strategies -->` or `<!-- generated: common-options -->`.
"""
from __future__ import annotations

import dataclasses
import json
import re
import typing
from typing import Any

from .sections import SECTIONS
from .strategies import Options, Strategy, list_strategies

MARKER = re.compile(r"^<!-- generated: ([a-z-]+)(?: ([a-z_]+))? -->$", re.MULTILINE)


def render(markdown: str) -> str:
    """`markdown` with every generated-table marker replaced by its table."""
    return MARKER.sub(lambda m: table(m.group(1), m.group(2)), markdown)


def table(kind: str, arg: str | None = None) -> str:
    """One generated table: `recipe-keys SECTION`, `strategies` or `common-options`."""
    if kind == "recipe-keys" and arg in SECTIONS:
        return recipe_keys(arg)
    if kind == "strategies":
        return strategies_table()
    if kind == "common-options":
        return common_options()
    raise ValueError(f"unknown generated table: {kind} {arg or ''}".strip())


def value(v: Any) -> str:
    """A default as YAML would write it in a recipe (`null`, `false`, `0.001`, `[]`, `resnet18`)."""
    text = v if isinstance(v, str) else json.dumps(v)
    return f"`{text}`"


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def recipe_keys(section: str) -> str:
    """The `| key | default | meaning |` table of one recipe section."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(SECTIONS[section]):
        meaning = f.metadata.get("help")
        if not meaning:
            raise ValueError(f"recipe key {section}.{f.name} has no help text (sections.key(default, help))")
        rows.append(f"| `{section}.{f.name}` | {value(_default(f))} | {_cell(meaning)} |")
    return "\n".join(rows)


def _common() -> set[str]:
    return {f.name for f in dataclasses.fields(Options)}


def _choices(hint: Any) -> str:
    """`a` \\| `b` for a Literal option (inside Optional too), else ''."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        return " \\| ".join(value(a) for a in typing.get_args(hint))
    return _choices(args[0]) if len(args) == 1 else ""


def _option(f: dataclasses.Field, hint: Any) -> str:
    default = "written by the run" if f.metadata.get("recorded") else value(_default(f))
    choices = _choices(hint)
    text = f"`{f.name}` ({default}{'; ' + choices if choices else ''})"
    return text + (f": {_cell(f.metadata['help'])}" if f.metadata.get("help") else "")


def strategies_table() -> str:
    """Every registered strategy: what learns (its docstring's first line) and its own options."""
    rows = ["| strategy | what learns | options (default) |", "|---|---|---|"]
    for s in list_strategies():
        hints = typing.get_type_hints(s.options)
        own = [_option(f, hints[f.name]) for f in dataclasses.fields(s.options) if f.name not in _common()]
        aliases = f" (alias {', '.join(f'`{a}`' for a in s.aliases)})" if s.aliases else ""
        rows.append(f"| `{s.name}`{aliases} | {_cell(s.summary)} | {'<br>'.join(own) or '—'} |")  # one per line
    return "\n".join(rows)


def _by_strategy(name: str, strategies: list[Strategy]) -> str:
    defaults: dict[str, list[str]] = {}
    for s in strategies:
        defaults.setdefault(value(s.option_defaults()[name]), []).append(s.name)
    if len(defaults) == 1:
        return next(iter(defaults))
    common = max(defaults, key=lambda d: len(defaults[d]))
    others = "; ".join(f"{d} for {', '.join(f'`{n}`' for n in names)}" for d, names in defaults.items()
                       if d != common)
    return f"{common} ({others})"


def common_options() -> str:
    """The options every strategy has, with their defaults (naming the strategies that differ)."""
    strategies = list_strategies()
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(Options):
        if f.name == "name":
            continue
        rows.append(f"| `{f.name}` | {_by_strategy(f.name, strategies)} | {_cell(f.metadata.get('help', ''))} |")
    return "\n".join(rows)
