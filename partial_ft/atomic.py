"""Writing files so that a reader (or a crash) sees the old file or the new one, never half of one."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import UserError


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary sibling, fsync it, then rename it over `path`. On any error the
    temporary file is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as any new file (some writers create private files)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically replace `path` with `text`."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def check_writable(path: str | Path, what: str) -> None:
    """Refuse a path below a regular file, or in a place this process cannot create files in: found by
    really creating a file in the nearest existing folder (os.access says yes to root, and knows nothing
    of read-only file systems)."""
    path = Path(path)
    parent = path if path.is_dir() else path.parent
    while not parent.exists():  # the nearest existing folder is where mkdir would start
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} {path}: {parent} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=parent, prefix=".partial_ft-probe-"):
            pass
    except OSError as e:
        raise UserError(f"{what} {path} is not writable: cannot create files in {parent} "
                        f"({e.strerror or type(e).__name__})") from None


def check_file_target(path: str | Path, what: str) -> Path:
    """A file path we may write: not a folder, not below a regular file, in a writable place."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file path")
    check_writable(path, what)
    return path
