"""One process per run folder: filelock's FileLock on `RUN/.partial_ft.lock`.

The lock is the kernel's (flock): it is freed when its process dies however it dies, so there is no
stale-lock code, and a dead run's lock is taken by exactly one of the processes that try at once. The
holder writes who it is into the file (for the message others get: the file's content decides nothing)
and removes the file while it still holds it, so a finished run leaves no lock behind (filelock retries
when the inode it locked was unlinked meanwhile).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from filelock import FileLock, Timeout

from .errors import UserError, first_line

LOCK = ".partial_ft.lock"


def _kind_error(path: Path) -> Optional[str]:
    """Why `path` cannot be a lock file (a link, a folder, anything but a regular file), or None."""
    if path.is_symlink():
        return "is a symbolic link"
    if path.exists() and not path.is_file():
        return "is a folder" if path.is_dir() else "is not a regular file"
    return None


def owner_text(run_dir: Path) -> str:
    """Who holds the folder, as the lock file says (only for messages: any content is read safely)."""
    try:
        owner = json.loads((run_dir / LOCK).read_text()[:100_000])
        pid, host, since = (str(owner[k])[:40] for k in ("pid", "host", "started"))
        return f"process {pid} on {host} (since {since})"
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "another process"


class RunLock:
    """The lock of one run folder; `acquire` refuses (UserError) when another process holds it."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._lock: Optional[FileLock] = None

    def _refuse_kind(self) -> None:
        why = _kind_error(self.path)
        if why:
            raise UserError(f"the lock {self.path} {why}, not a lock file partial_ft wrote; remove it if no run "
                            "uses this folder")

    def _in_use(self) -> UserError:
        return UserError(f"run folder {self.run_dir} is in use by {owner_text(self.run_dir)}; wait for it to "
                         f"finish (the lock is freed when that process ends)")

    def check_free(self) -> None:
        """Refuse a folder another process holds, without taking or creating anything."""
        self._refuse_kind()
        if not self.path.exists():
            return
        # the file exists: nothing is created; 1 s rides over the probes of a multi-process launch
        probe = FileLock(self.path, timeout=1, preserve_lock_file=True)
        try:
            probe.acquire()
        except Timeout:
            raise self._in_use() from None
        except OSError as e:
            raise UserError(f"cannot lock {self.path}: {e.strerror or first_line(e)}") from None
        probe.release()

    def acquire(self) -> None:
        """Take the lock and write who holds it; refuses when another process holds it."""
        self._refuse_kind()
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n"

        def write_owner(fd: int) -> None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, me.encode(), 0)

        lock = FileLock(self.path, timeout=1, on_acquired=write_owner)  # rides over a brief check_free probe
        try:
            lock.acquire()
        except Timeout:
            raise self._in_use() from None
        except OSError as e:
            raise UserError(f"cannot lock {self.path}: {e.strerror or first_line(e)}") from None
        self._lock = lock

    def release(self) -> None:
        """Remove the file while holding it, then let go (a crash skips this: the kernel frees the lock)."""
        if self._lock is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            self._lock.release()
            self._lock = None


@contextmanager
def hold_folder(lock_path: Path, shared: bool, busy: str) -> Iterator[None]:
    """One sweep or advise per folder: held alone, or shared by the workers of one study (flock, freed
    when the process dies). `busy`: the error when another process holds it in the other mode."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(busy) from None
        yield
    finally:
        os.close(fd)  # and with it the lock
