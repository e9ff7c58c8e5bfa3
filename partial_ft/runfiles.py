"""What a run folder holds and how partial_ft tells it from any other folder (see docs/run-folder.md).

A folder is a run folder only when it holds a valid marker, `.partial_ft-run`: JSON that partial_ft
wrote with a run id, the version and the time, and the manifest, the names of the files and folders
this run wrote (each registered before it is first written). `--overwrite` moves exactly those aside,
never anything else, and never through a symbolic link; the old run stays in `.partial_ft-previous/`
until the new one has finished, and comes back if it fails. Outputs of other commands never land on a
run's files (`check_output`).
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

from .atomic import check_name, write_text
from .checkpoints import CHECKPOINTS
from .delta import DELTA_NAME
from .errors import UserError
from .runlock import LOCK
from .version import __version__

MARKER = ".partial_ft-run"
PREVIOUS = ".partial_ft-previous"  # the run an --overwrite replaces, until the new one has finished
RECIPE, PLAN, DATA, METRICS, SUMMARY, EVAL = "recipe.yaml", "plan.txt", "data.json", "metrics.jsonl", "summary.json", "eval.json"
CARD, CURVE, LOGS = "README.md", "training_curve.png", "logs"  # the model card; loss and val top-1 vs step; trackers
CONFUSION = "confusion_matrix.png"  # written by `eval`, beside eval.json
STRATEGY = "strategy.json"  # the strategy with data-driven choices resolved (what --resume rebuilds)
# what a run may write, and so all a manifest may name (anything else in the folder is the user's)
OWN = frozenset({RECIPE, PLAN, DATA, METRICS, SUMMARY, EVAL, STRATEGY, DELTA_NAME, CHECKPOINTS, CARD, LOGS, CURVE,
                 CONFUSION})
# partial_ft's own bookkeeping in a run folder
BOOKKEEPING = frozenset({MARKER, LOCK, PREVIOUS})


def read_marker(run_dir: Path) -> Optional[dict[str, Any]]:
    """The folder's marker when it is one partial_ft wrote (a regular file holding a run id, version, time
    and a manifest of names it may write), else None: an empty or foreign marker does not count."""
    path = Path(run_dir) / MARKER
    if path.is_symlink() or not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text()[:100_000])
        ok = (isinstance(marker, dict) and set(marker) == {"partial_ft", "run_id", "created", "files"}
              and all(isinstance(marker[k], str) and marker[k] for k in ("partial_ft", "run_id", "created"))
              and isinstance(marker["files"], list) and all(name in OWN for name in marker["files"]))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return marker if ok else None


def is_ours(run_dir: Path) -> bool:
    """Whether partial_ft made this folder (a valid marker; nothing else counts)."""
    return read_marker(run_dir) is not None


def new_marker(run_dir: Path) -> dict[str, Any]:
    """Mark a folder as a new run's (a fresh run id, nothing written yet)."""
    marker = {"partial_ft": __version__, "run_id": uuid.uuid4().hex,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": []}
    write_text(Path(run_dir) / MARKER, json.dumps(marker, indent=2) + "\n")
    return marker


def register(run_dir: Path, names: Iterable[str]) -> None:
    """Add names to the run's manifest before they are first written (a crash then leaves nothing
    unlisted); a folder without a valid marker (a pushed folder) gets none."""
    marker = read_marker(run_dir)
    new = [n for n in names if n in OWN]
    if marker is None or set(new) <= set(marker["files"]):
        return
    for name in set(new) - set(marker["files"]):
        if os.path.lexists(Path(run_dir) / name):
            raise UserError(f"cannot write {Path(run_dir) / name}: something the run did not write is there "
                            "(partial_ft never replaces what it did not write); move it away")
    marker["files"] = sorted(set(marker["files"]) | set(new))
    try:
        write_text(Path(run_dir) / MARKER, json.dumps(marker, indent=2) + "\n")
    except UserError as e:  # name what the user asked for too (eval.json, ...), not only the marker
        raise UserError(f"cannot write {Path(run_dir) / new[0]}: {e}") from None


def refuse_links(run_dir: Path) -> None:
    """A run path that is a symbolic link is never written, moved or deleted through: refuse the folder."""
    for name in sorted(OWN | BOOKKEEPING):
        if (Path(run_dir) / name).is_symlink():
            raise UserError(f"run folder {run_dir}: {name} is a symbolic link; partial_ft never writes or deletes "
                            "through links: replace it with a real file or folder, or choose another output.dir")


def refuse_unlisted(run_dir: Path, marker: dict[str, Any]) -> None:
    """--overwrite writes the run's names: one present that the old run did not write is the user's."""
    unlisted = sorted(n for n in OWN if os.path.lexists(Path(run_dir) / n) and n not in marker["files"])
    if unlisted:
        raise UserError(f"run folder {run_dir} holds {', '.join(unlisted)}, which its run did not write; "
                        "partial_ft never replaces what it did not write: move it, or choose another output.dir")


def _remove(path: Path) -> None:
    """Remove one manifest entry; rmtree never follows links inside, and links were refused before."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def move_aside(run_dir: Path) -> None:
    """--overwrite: keep the old run (its listed files and marker) in PREVIOUS until the new one has
    finished. When PREVIOUS already holds one (an earlier --overwrite was cut short), the folder's
    current run never finished: its listed files go and PREVIOUS stays."""
    run_dir, marker = Path(run_dir), read_marker(run_dir)
    assert marker is not None, "check() accepts only marked folders"
    previous = run_dir / PREVIOUS
    if previous.is_dir() and read_marker(previous) is not None:
        for name in marker["files"]:
            _remove(run_dir / name)
        (run_dir / MARKER).unlink()
        return
    if os.path.lexists(previous):  # a move cut short before its marker arrived: put back what it moved
        if previous.is_dir() and not previous.is_symlink():
            for entry in previous.iterdir():
                if entry.name in marker["files"] and not os.path.lexists(run_dir / entry.name):
                    os.replace(entry, run_dir / entry.name)
        _remove(previous)
    previous.mkdir()
    for name in marker["files"]:
        if os.path.lexists(run_dir / name):
            os.replace(run_dir / name, previous / name)
    os.replace(run_dir / MARKER, previous / MARKER)  # last: until then the folder's own marker says what is whose


def restore_previous(run_dir: Path) -> None:
    """The new run failed: remove what it wrote and bring the old run back as it was."""
    run_dir, previous = Path(run_dir), Path(run_dir) / PREVIOUS
    old = read_marker(previous)
    if old is None:
        return
    current = read_marker(run_dir)
    for name in current["files"] if current else []:
        _remove(run_dir / name)
    for name in old["files"]:
        if os.path.lexists(previous / name):
            os.replace(previous / name, run_dir / name)
    os.replace(previous / MARKER, run_dir / MARKER)
    previous.rmdir()


def drop_previous(run_dir: Path) -> None:
    """The new run finished: the old one it replaced goes."""
    previous = Path(run_dir) / PREVIOUS
    if previous.is_dir() and not previous.is_symlink():
        shutil.rmtree(previous)


# --------------------------------------------------------------------------------------------
# outputs of other commands (predict, export, push) never land on what a run or a read needs


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
