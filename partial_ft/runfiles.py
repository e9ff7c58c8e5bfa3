"""What a run folder holds and how partial_ft tells it from any other folder (see docs/run-folder.md).

A folder is a run folder only when it holds a valid marker, `.partial_ft-run`: JSON that partial_ft
wrote with a run id, the version and the time, and the manifest, the names of the files and folders
this run wrote (each registered before it is first written). `--overwrite` moves exactly those aside,
never anything else, and never through a symbolic link; the old run stays in `.partial_ft-previous/`
until the new one has finished, and comes back if it fails. Whether a run may use a folder is decided
here, in one pass (`check`).
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

from . import checkpoints, yamlsafe
from .atomic import write_text
from .checkpoints import CHECKPOINTS
from .delta import DELTA_NAME
from .errors import UserError, first_line
from .recipe import Recipe, differences, from_dict
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
# whether a run may use the folder: one pass over what it holds


def check(run_dir: Path, recipe: Recipe, overwrite: bool, resume: bool,
          data_info: Optional[dict[str, Any]] = None) -> Optional[Path]:
    """What the folder holds, decided without writing anything: a folder partial_ft did not mark, run paths
    that are links, names an --overwrite would take that its run did not write, a run there without
    --overwrite or --resume, a finished run to resume, a resume with another recipe or (`data_info`, once
    the data is loaded) other data, damaged metrics and a damaged latest checkpoint are refused. Returns
    the checkpoint to resume from (None: start from the beginning)."""
    run_dir = Path(run_dir)
    marker = _marker_of_run(run_dir)
    if marker is None:  # nothing there yet
        return None
    finished = (run_dir / SUMMARY).is_file()
    if overwrite:
        refuse_unlisted(run_dir, marker)
        return None
    if resume:
        _refuse_other_run(run_dir, recipe, finished, data_info)
    last = checkpoints.latest(run_dir)  # a damaged `latest` pointer is an error here, never a restart
    if not resume:
        if finished:
            raise UserError(f"run folder {run_dir} already holds a run that finished; pass --overwrite to replace "
                            "it or set output.dir")
        state = f"stopped at step {checkpoints.step_of(last)}" if last else "that stopped before its first checkpoint"
        raise UserError(f"run folder {run_dir} already holds a run {state}; pass --resume to continue it from "
                        "its last checkpoint, --overwrite to replace it, or set output.dir")
    if last is not None:
        checkpoints.verify(last)  # a damaged checkpoint is refused before any data or model is loaded
    return last  # None: stopped before its first checkpoint, so it starts from the beginning


def _marker_of_run(run_dir: Path) -> Optional[dict[str, Any]]:
    """The marker of the run in the folder (its links refused), or None when the folder holds nothing (a
    lock alone: its process died before marking the folder); a folder of other files is refused."""
    held = [p for p in run_dir.iterdir() if p.name != LOCK] if run_dir.is_dir() else []
    if not held:
        return None
    marker = read_marker(run_dir)
    if marker is None:
        sample = ", ".join(sorted(p.name for p in held)[:3])
        raise UserError(f"output.dir {run_dir} is not empty and is not a partial_ft run folder (it holds {sample}, "
                        "...); partial_ft never replaces what it did not write: choose another output.dir")
    refuse_links(run_dir)
    return marker


def _refuse_other_run(run_dir: Path, recipe: Recipe, finished: bool, data_info: Optional[dict[str, Any]]) -> None:
    """--resume continues the run there only: not a finished one, not with damaged metrics, another
    recipe or (when given) data that data.json no longer describes."""
    if finished:
        raise UserError(f"the run in {run_dir} already finished: nothing to resume (--overwrite runs it again)")
    read_metrics(run_dir)  # a damaged log is named now, not as a traceback when the run finishes
    if data_info is not None:
        check_same_data(run_dir, data_info)
    old = read_recipe(run_dir)
    differ = differences(old, recipe)
    if differ:
        raise UserError(f"cannot resume {run_dir} with a different recipe: {', '.join(differ)} differ "
                        f"from its recipe.yaml (--overwrite starts afresh)")


def read_recipe(run_dir: Path) -> Recipe:
    """The recipe the folder records; a missing, empty or damaged one is one clear error."""
    path = Path(run_dir) / RECIPE
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no {RECIPE})")
    try:
        raw = yamlsafe.load_file(path, "recipe")
        if not isinstance(raw, dict):
            raise ValueError("not a mapping of recipe sections")
        return from_dict(raw, name=Path(run_dir).name)
    except (ValueError, UserError) as e:
        raise UserError(f"{path} is damaged ({first_line(e)}); restore it, or --overwrite to start again") from None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics.jsonl records; a damaged line is one clear error naming the file."""
    path = Path(run_dir) / METRICS
    records = []
    for number, line in enumerate(path.read_text().splitlines() if path.is_file() else [], 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is damaged (line {number}: {first_line(e)[:80]}); restore it, or --overwrite "
                            "to start again") from None
        records.append(record)
    return records


# what data.json records that must hold for a resumed run to continue the same one
SAME_DATA = ("train_samples", "val_samples", "num_classes", "class_names", "rows_sha256")


def check_same_data(run_dir: Path, info: dict[str, Any]) -> None:
    """Resuming on changed data would continue a run that data.json no longer describes: refuse."""
    path = Path(run_dir) / DATA
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is damaged ({first_line(e)}); --overwrite to start again") from None
    differ = [k for k in SAME_DATA if k in saved and saved.get(k) != info.get(k)]
    if differ:
        k = differ[0]
        raise UserError(f"cannot resume {run_dir}: the dataset changed since the run started ({k}: "
                        f"{_short(saved.get(k))} then, {_short(info.get(k))} now); --overwrite to start again")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
