"""Resumable checkpoints inside a run folder (`checkpoints/<name>/`): Accelerate's save_state (model,
optimizer, RNG states) plus `train_state.json`, the loop's position and the scheduler's state as plain
data, and `manifest.json`: the size and sha256 of every other file, checked before anything is restored (a
truncated RNG state would otherwise resume silently into other weights). Each is written to a temporary
folder and renamed into place; `checkpoints/latest` names the newest complete one (a folder directly
inside checkpoints/, nothing else) and is itself replaced atomically, so a crash mid-write leaves the
previous one in charge.
Used through the run folder (rundir.py); nothing here decides whether a folder may be used.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

from safetensors.torch import load_file, save_file

from . import jsonsafe
from .atomic import USER_ERRNOS, write_text
from .errors import UserError, first_line, load_reason, shorten

CHECKPOINTS = "checkpoints"
STATE_NAME = "train_state.json"
TENSORS_NAME = "loop_tensors.safetensors"  # the loop's own tensors (an EMA, the best epoch's values)
MANIFEST = "manifest.json"
NAME = re.compile(r"step-\d{8,}-epoch-\d+-batch-\d+")  # what save() names a checkpoint folder
MAX_JSON_BYTES = 16 * 2**20
AGAIN = "restore it, or --overwrite to start again"


def latest(run_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint of a run, or None when none was saved. `latest` must name a
    checkpoint folder directly inside checkpoints/: an empty, foreign or dangling name is an error (it
    would otherwise restart from step 0, or restore someone else's files)."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / "latest"
    if not pointer.exists() and not pointer.is_symlink():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{pointer} cannot be read ({first_line(e)}); {AGAIN}") from None
    if not name:
        raise UserError(f"{pointer} is empty: it names the checkpoint to resume from; {AGAIN}")
    if not NAME.fullmatch(name):
        raise UserError(f"{pointer} names {shorten(name)}, not a checkpoint folder of {root}; {AGAIN}")
    folder = root / name
    if folder.is_symlink() or not folder.is_dir():
        raise UserError(f"{pointer} names {name}, which is {'a link' if folder.is_symlink() else 'missing'}; "
                        f"{AGAIN}")
    return folder


def step_of(folder: Optional[Path]) -> int:
    """The optimizer step a checkpoint was taken at (0 for none)."""
    return read_state(folder)["step"] if folder else 0


def read_state(folder: Path) -> dict[str, Any]:
    """The loop's position saved with a checkpoint; a damaged file is one clear error."""
    path = folder / STATE_NAME
    try:
        state = json.loads(_small_text(path))
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("no integer 'step'")
        return state
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged ({first_line(e)}); delete {folder} to resume from an earlier "
                        "checkpoint, or --overwrite to start again") from None


def save(acc: Any, run_dir: Path, progress: dict[str, Any], keep: Optional[int] = 2,
         tensors: Optional[dict[str, Any]] = None) -> Path:
    """Accelerate's save_state plus the loop's position (and `tensors`, the loop's own, as safetensors),
    into a temporary folder renamed into place; then point `latest` at it and keep the newest `keep`
    checkpoints (None: all). Every process calls this. A full disk (or read-only place) is one UserError
    naming the checkpoint; the last complete one stays in charge."""
    # not Accelerate's ProjectConfiguration(automatic_checkpoint_naming, total_limit): it deletes the oldest
    # checkpoints before the new one is written, writes in place (no rename), and names by save count
    root = Path(run_dir) / CHECKPOINTS
    name = f"step-{progress['step']:08d}-epoch-{progress['epoch']}-batch-{progress['batches']}"
    tmp, final = root / f".tmp-{name}", root / name
    if root.is_symlink():  # pruning would delete inside the link's target
        raise UserError(f"{root} is a symbolic link; partial_ft never writes or deletes checkpoints through links")
    try:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / STATE_NAME).write_text(jsonsafe.dumps(progress) + "\n")
            if tensors:
                save_file(tensors, str(tmp / TENSORS_NAME))
            (tmp / MANIFEST).write_text(json.dumps(_describe_files(tmp), indent=1, sort_keys=True) + "\n")
            _fsync(tmp / MANIFEST)  # with _describe_files' fsyncs: the data is on disk before any name points at it
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            write_text(root / "latest", name + "\n")
            prune(root, keep)
    except OSError as e:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if e.errno not in USER_ERRNOS:
            raise
        kept = latest(run_dir)
        raise UserError(f"cannot write checkpoint {final}: {e.strerror}; "
                        f"{f'the last one, {kept}, is kept' if kept else 'no earlier checkpoint exists'}") from None
    acc.wait_for_everyone()
    return final


def prune(root: Path, keep: Optional[int]) -> None:
    """Bound disk use: keep the newest `keep` complete checkpoints (never the one `latest` names), and no
    leftovers of interrupted writes."""
    pointer = root / "latest"
    current = pointer.read_text().strip() if pointer.is_file() else None
    # real folders only: a link is never deleted through (its target is not the run's)
    folders = sorted((f for f in root.iterdir() if f.is_dir() and not f.is_symlink()), key=lambda f: f.name)
    complete = [f for f in folders if f.name.startswith("step-") and f.name != current]
    older = complete if keep is None else complete[-(keep - 1):] if keep > 1 else []  # + current = keep
    kept = {f.name for f in older}
    for old in folders:
        if old.name != current and old.name not in kept:
            shutil.rmtree(old, ignore_errors=True)


def load(acc: Any, folder: Path) -> dict[str, Any]:
    """Restore model, optimizer and RNG states; returns the loop's position (and the scheduler's state:
    plain data, never a pickle). Damaged or tampered files are one clear error, never unpickled."""
    if any(folder.glob("custom_checkpoint_*.pkl")):  # Accelerate would unpickle it with weights_only=False
        raise UserError(f"checkpoint {folder} was written by an older partial_ft (a pickled scheduler); resume it "
                        "with that version, or --overwrite to start again")
    verify(folder)
    state = read_state(folder)
    try:
        acc.load_state(str(folder))
    except Exception as e:  # truncated tensors, an optimizer file holding more than plain tensors, ...
        reason = load_reason(e)
        raise UserError(f"checkpoint {folder} cannot be restored ({reason[:200]}); delete it to resume from an "
                        "earlier checkpoint, or --overwrite to start again") from None
    return state


def load_tensors(folder: Path) -> dict[str, Any]:
    """The loop's own tensors a checkpoint holds ({} when it holds none)."""
    path = folder / TENSORS_NAME
    if not path.is_file():
        return {}
    try:
        return load_file(str(path))
    except Exception as e:
        raise UserError(f"checkpoint {folder} cannot be restored ({first_line(e)}); delete it to resume from an "
                        "earlier checkpoint, or --overwrite to start again") from None


def remove(run_dir: Path) -> None:
    """A finished run keeps its delta, not the (whole-model) checkpoints."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_symlink():  # (rundir refuses a linked checkpoints/ before any run starts)
        shutil.rmtree(root, ignore_errors=True)


def _files(folder: Path) -> list[Path]:
    """Every entry below `folder` that is not a directory (links included: verify refuses them)."""
    return sorted(f for f in folder.rglob("*") if f.is_symlink() or not f.is_dir())


def _describe_files(folder: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {size, sha256}} of every file of a checkpoint but the manifest, each fsynced."""
    out = {}
    for f in _files(folder):
        if f.name != MANIFEST or f.parent != folder:
            out[f.relative_to(folder).as_posix()] = {"size": f.stat().st_size, "sha256": _sha256(f)}
            _fsync(f)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def verify(folder: Path) -> None:
    """Every file of a checkpoint as its manifest lists it (no file missing, added, resized or changed, no
    link), before anything is restored: one error naming the first file that differs."""
    try:
        manifest = json.loads(_small_text(folder / MANIFEST))
        if not isinstance(manifest, dict) or not all(isinstance(v, dict) for v in manifest.values()):
            raise ValueError("not a mapping of files")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"checkpoint {folder} has no readable {MANIFEST} ({first_line(e)}): it was written by an "
                        f"older partial_ft or damaged; delete it to resume from an earlier one, or --overwrite to "
                        "start again") from None
    found = {f.relative_to(folder).as_posix(): f for f in _files(folder) if f != folder / MANIFEST}
    for name in sorted(manifest.keys() | found.keys()):
        f, want = found.get(name), manifest.get(name)
        problem = ("is missing" if f is None else "was not written by the checkpoint" if want is None else
                   "is a link" if f.is_symlink() else
                   f"has {f.stat().st_size:,} bytes, not {_count(want.get('size'))}" if f.stat().st_size != want.get("size")
                   else "has other bytes than were saved" if _sha256(f) != want.get("sha256") else None)
        if problem:
            raise UserError(f"checkpoint {folder}: {name if len(name) <= 120 else shorten(name, 120)} {problem}; delete {folder} to resume from an "
                            "earlier checkpoint, or --overwrite to start again")


def _small_text(path: Path) -> str:
    """A checkpoint's JSON file, read only when it is of a plausible size (its loss curve and scheduler
    state are kilobytes; a file of gigabytes was not written by save())."""
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{path.stat().st_size:,} bytes, more than {MAX_JSON_BYTES:,}")
    return path.read_text(encoding="utf-8")


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else shorten(value)


def check_position(state: dict[str, Any], folder: Path, epochs: int, batches_per_epoch: int, total_steps: int,
                   fields: set[str]) -> None:
    """A checkpoint's position inside the run the recipe describes, with exactly the loop's `fields`: one
    past its end (or negative, or not a number) belongs to another run or was edited."""
    if set(state) != fields or not isinstance(state.get("scheduler"), dict):
        odd = sorted(set(state) ^ fields) or ["scheduler"]
        raise UserError(f"{folder / STATE_NAME} does not hold a training position (fields {', '.join(odd[:3])}); "
                        f"delete {folder} to resume from an earlier checkpoint, or --overwrite to start again")
    epoch, batches, step = (state.get(k) for k in ("epoch", "batches", "step"))
    numbers = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (epoch, batches, step))
    if not (numbers and epoch < epochs and batches <= batches_per_epoch and step <= total_steps):
        raise UserError(f"{folder / STATE_NAME} is at epoch {shorten(epoch)}, batch {shorten(batches)}, step "
                        f"{shorten(step)}: past the end of the recipe's run ({epochs} epochs of {batches_per_epoch} "
                        f"batches, {total_steps} steps); delete {folder} to resume from an earlier checkpoint, or "
                        "--overwrite to start again")
