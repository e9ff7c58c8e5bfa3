"""Walking the user's folders without looping: every real directory is entered once, however many
symbolic links lead to it.

glob.glob(recursive=True) follows links to directories and enters them again and again: a folder with two
links to its parent makes `**` double its work at every level and hang. Path.rglob in Python 3.11 does
not follow links at all, which hides image folders that users link in. So partial_ft walks with os.walk
(followlinks=True), skipping a directory whose (device, inode) it has already entered, and matches glob
patterns on the relative paths it meets (`**` = any number of folders, `*` / `?` / `[...]` within one
name, names starting with '.' matched only by a pattern that starts with '.', as glob does).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Optional

MAGIC = "*?["


def entries_below(root: Path, max_depth: Optional[int] = None) -> Iterator[tuple[Path, bool]]:
    """(path, is_dir) of everything below `root` (not root itself), sorted per folder, each real directory
    entered once; `max_depth` bounds how many levels down (1: root's own entries)."""
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        depth = len(Path(folder).relative_to(root).parts) + 1
        try:
            st = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # reached again through a link: already walked
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in dirs:
            yield Path(folder) / name, True
        for name in sorted(files):
            yield Path(folder) / name, False
        if max_depth is not None and depth >= max_depth:
            dirs[:] = []


def files_below(root: Path) -> list[Path]:
    """Every file below `root`, sorted, without looping on links (see entries_below)."""
    return sorted(p for p, is_dir in entries_below(root) if not is_dir)


def glob(pattern: str) -> list[Path]:
    """Paths matching a glob pattern (sorted), as glob.glob(recursive=True) finds them but never looping."""
    parts = Path(pattern).expanduser().parts
    fixed = next((i for i, p in enumerate(parts) if any(c in p for c in MAGIC)), len(parts))
    base, rest = Path(*parts[:fixed]) if fixed else Path("."), list(parts[fixed:])
    if not rest:
        return [base] if base.exists() else []
    if not base.is_dir():
        return []
    depth = None if "**" in rest else len(rest)
    found = [path for path, _ in entries_below(base, depth) if _match(rest, path.relative_to(base).parts)]
    return sorted(found)


def _match(patterns: list[str], names: tuple[str, ...]) -> bool:
    """Whether the names of a relative path match the pattern's components (`**`: zero or more names)."""
    if not patterns:
        return not names
    head, tail = patterns[0], patterns[1:]
    if head == "**":
        return _match(tail, names) or (bool(names) and not names[0].startswith(".") and _match(patterns, names[1:]))
    if not names or (names[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatchcase(names[0], head) and _match(tail, names[1:])
