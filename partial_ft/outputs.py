"""Outputs of other commands (predict, export, push) never land on what a run or a read needs: a run
folder's files, a file being read, a file of a folder being read."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .atomic import check_name
from .errors import UserError
from .runfiles import BOOKKEEPING, MARKER, OWN


def _protected_in(folder: Path, name: str, sources: set[str]) -> bool:
    """Whether `folder/name` is (or is inside) a file of a run folder or of a folder being read."""
    marked = os.path.lexists(folder / MARKER) or os.path.realpath(folder) in sources
    return marked and (name in OWN or name in BOOKKEEPING)


def check_output(path: str | Path, what: str, reading: Iterable[str | Path] = (),
                 source_folders: Iterable[str | Path] = ()) -> Path:
    """Refuse an output path that is a symbolic link, a run folder's file (delta, recipe, summary, ...,
    or anything inside its checkpoints/), a file of a folder being read (`source_folders`: pushed
    layouts), or a file being read (`reading`), as written or through links. Returns the path."""
    path = check_name(path, what)
    if path.is_symlink():
        raise UserError(f"{what} {path} is a symbolic link; give the file's own path")
    real = Path(os.path.realpath(path))
    if any(real == Path(os.path.realpath(r)) for r in reading):
        raise UserError(f"{what} {path} is an input being read; choose another file")
    sources = {os.path.realpath(f) for f in source_folders}
    for candidate in (path.absolute(), real):
        for inner in (candidate, *candidate.parents):
            if inner.parent != inner and _protected_in(inner.parent, inner.name, sources):
                raise UserError(f"{what} {path} is {inner.name} of the run in {inner.parent}; partial_ft never "
                                "writes its outputs over a run's files: choose a path outside them")
    return path
