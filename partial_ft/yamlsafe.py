"""The one YAML reader for everything a user hands us: recipes, `key=value` overrides, grid files, a run's
recorded recipe.

PyYAML's SafeLoader never runs code, but it still (a) keeps the last of two equal keys without a word,
(b) shares aliased nodes, so a few hundred bytes of nested anchors (`&a [*b, *b, ...]`) describe a value
with billions of elements that the first walk over it (our coercion, a deepcopy, an error message) tries
to build, and (c) recurses once per nesting level. `SafeLoader` here refuses duplicate keys, self-
referencing aliases and documents whose aliases expand to more than MAX_ALIAS_EXPANSION nodes, and `load`
turns every such problem (and RecursionError) into one UserError naming where it is.
"""
from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import CollectionNode, MappingNode, Node

from .errors import UserError, shorten

# Nodes that aliases may add on top of those written out. Recipes and grids alias a few small blocks
# at most (a shared `overrides:` list, a strategy spec); a bomb adds millions.
MAX_ALIAS_EXPANSION = 10_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlBombError(yaml.YAMLError):
    """Aliases that expand too far, or that refer to themselves."""


class DuplicateKeyError(ConstructorError):
    """A mapping that names one key twice (PyYAML would keep the last without a word)."""


class Refused(UserError):
    """Well-formed YAML that is refused (a bomb, a duplicate key): never to be taken as a plain string."""


class SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate mapping keys and alias bombs (see the module docstring)."""

    def compose_document(self) -> Node:
        node = super().compose_document()
        _check_expansion(node)
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for index, (key_node, _) in enumerate(node.value):
                if key_node.tag == _MERGE_TAG:
                    continue  # `<<: *base` then overriding a merged key is YAML's intended use
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.setdefault(key, (index, key_node))
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if first[0] != index:
                    raise DuplicateKeyError("while constructing a mapping", node.start_mark,
                                           f"duplicate key {shorten(key)} (first at line {first[1].start_mark.line + 1})",
                                           key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: Node | None) -> None:
    """Count the nodes the document has once every alias is expanded (shared nodes counted once per
    use), without expanding it: each distinct node's expanded size is computed once, iteratively."""
    if root is None:
        return
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    distinct = 0
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
            continue
        if key in size:
            continue
        if key in on_path:
            raise YamlBombError(f"an alias refers to the node that contains it (line {node.start_mark.line + 1})")
        distinct += 1
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)
    if size[id(root)] - distinct > MAX_ALIAS_EXPANSION:
        raise YamlBombError(f"anchors and aliases expand to {size[id(root)]:,} values, more than "
                            f"{distinct + MAX_ALIAS_EXPANSION:,} allowed (refused as a YAML bomb)")


def _children(node: Node) -> list[Node]:
    if not isinstance(node, CollectionNode):
        return []
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value)


def load(text: str, where: str) -> Any:
    """Parse YAML text with SafeLoader. Any problem is one UserError: `<where>: invalid YAML at line L,
    column C: <problem>`."""
    try:
        return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - SafeLoader subclass
    except YamlBombError as e:
        raise Refused(f"{where}: {e}") from None
    except DuplicateKeyError as e:
        raise Refused(f"{where}: {e.problem} at line {e.problem_mark.line + 1}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        problem = problem if len(problem) <= 200 else problem[:200] + "..."
        raise UserError(f"{where}: invalid YAML{at}: {problem}") from None
    except RecursionError:
        raise UserError(f"{where}: invalid YAML: nested too deeply") from None


def load_file(path: Any, what: str = "YAML file") -> Any:
    """Read a UTF-8 YAML file with `load`; a missing, unreadable or non-UTF-8 file is one UserError."""
    try:
        text = open(path, encoding="utf-8").read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); a {what} is a YAML text file") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    return load(text, str(path))
