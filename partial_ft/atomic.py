"""Writing files so that a reader (or a crash) sees the old file or the new one, never half of one."""
from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import jsonsafe
from .errors import UserError

# write failures the user can fix (space, permissions, names, kinds): one `error:` line naming the path
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG,
               errno.EISDIR, errno.ENOTDIR, errno.EFBIG, errno.ELOOP}


def user_error(e: OSError, path: str | Path) -> UserError:
    """A write failure as the one line the user sees, naming the path (the last good file stays)."""
    return UserError(f"cannot write {path}: {e.strerror or type(e).__name__}; nothing was replaced")


def temp_sibling(path: Path) -> Path:
    """A new, empty file beside `path`: unique to this process and call (two writers of one path never
    share it), and short (a legal 250-character name stays legal)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".pft-", suffix=".tmp")
    os.close(fd)
    return Path(name)


@contextmanager
def staged(path: str | Path, write: Callable[[Path], None]) -> Iterator[Path]:
    """Call `write(tmp)` on a temporary sibling and fsync it; then run the block, then rename it over
    `path` (the rename is the commit: on any error before it, the temporary file goes and `path` is left
    as it was). Write failures the user can fix are one UserError naming `path`."""
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            raise UserError(f"cannot write {path}: it is a folder; move it away")
        tmp = temp_sibling(path)
    except OSError as e:
        raise (user_error(e, path) if e.errno in USER_ERRNOS else e) from None
    try:
        try:
            write(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # as any new file (mkstemp creates private files)
        except OSError as e:
            raise (user_error(e, path) if e.errno in USER_ERRNOS else e) from None
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise (user_error(e, path) if e.errno in USER_ERRNOS else e) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary sibling, fsync it, then rename it over `path`. On any error the
    temporary file is removed and `path` is left as it was."""
    with staged(path, write):
        pass
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Atomically replace `path` with `text`."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically replace `path` with `obj` as strict JSON (jsonsafe: NaN and infinities as null)."""
    return write_atomic(path, lambda tmp: tmp.write_text(jsonsafe.dumps(obj, indent=2) + "\n"))


def check_name(path: str | Path, what: str) -> Path:
    """Refuse a path with a name longer than file systems allow (255 bytes), before anything stats it."""
    path = Path(path)
    too_long = [part for part in path.parts if len(os.fsencode(part)) > 255]
    if too_long:
        raise UserError(f"{what} {str(path)[:80]}...: the name {too_long[0][:40]}... is longer than 255 bytes")
    return path


def check_writable(path: str | Path, what: str) -> None:
    """Refuse a path below a regular file, or in a place this process cannot create files in: found by
    really creating a file in the nearest existing folder (os.access says yes to root, and knows nothing
    of read-only file systems)."""
    path = check_name(path, what)
    try:
        parent = path if path.is_dir() else path.parent
        while not parent.exists():  # the nearest existing folder is where mkdir would start
            parent = parent.parent
    except OSError as e:  # a name too long, a loop of links, ...
        raise UserError(f"{what} {path}: {e.strerror or type(e).__name__}") from None
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
    path = check_name(path, what)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file path")
    check_writable(path, what)
    return path
