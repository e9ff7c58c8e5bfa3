"""Resumable checkpoints inside a run folder (`checkpoints/<name>/`): Accelerate's save_state (model,
optimizer, RNG states) plus `train_state.json`, the loop's position and the scheduler's state as plain
data. Each is written to a temporary folder and renamed into place; `checkpoints/latest` names the newest
complete one and is itself replaced atomically, so a crash mid-write leaves the previous one in charge.
Used through the run folder (rundir.py); nothing here decides whether a folder may be used.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from safetensors.torch import load_file, save_file

from . import jsonsafe
from .atomic import write_text
from .errors import UserError, first_line, load_reason

CHECKPOINTS = "checkpoints"
STATE_NAME = "train_state.json"
TENSORS_NAME = "loop_tensors.safetensors"  # the loop's own tensors (an EMA, the best epoch's values)


def latest(run_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint of a run, or None."""
    pointer = Path(run_dir) / CHECKPOINTS / "latest"
    if not pointer.is_file():
        return None
    folder = Path(run_dir) / CHECKPOINTS / pointer.read_text().strip()
    return folder if (folder / STATE_NAME).is_file() else None


def step_of(folder: Optional[Path]) -> int:
    """The optimizer step a checkpoint was taken at (0 for none)."""
    return read_state(folder)["step"] if folder else 0


def read_state(folder: Path) -> dict[str, Any]:
    """The loop's position saved with a checkpoint; a damaged file is one clear error."""
    path = folder / STATE_NAME
    try:
        state = json.loads(path.read_text())
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
    checkpoints (None: all). Every process calls this."""
    root = Path(run_dir) / CHECKPOINTS
    name = f"step-{progress['step']:08d}-epoch-{progress['epoch']}-batch-{progress['batches']}"
    tmp, final = root / f".tmp-{name}", root / name
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
        _fsync_tree(tmp)  # the data is on disk before any name points at it
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_text(root / "latest", name + "\n")
        prune(root, keep)
    acc.wait_for_everyone()
    return final


def prune(root: Path, keep: Optional[int]) -> None:
    """Bound disk use: keep the newest `keep` complete checkpoints (never the one `latest` names), and no
    leftovers of interrupted writes."""
    pointer = root / "latest"
    current = pointer.read_text().strip() if pointer.is_file() else None
    folders = sorted((f for f in root.iterdir() if f.is_dir()), key=lambda f: f.name)  # step-<zero padded>
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
    shutil.rmtree(Path(run_dir) / CHECKPOINTS, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
