"""Stopping cleanly on SIGTERM / Ctrl-C: the loop finishes its step, checkpoints, and raises Interrupted;
`--resume` continues from that checkpoint. DataLoader workers ignore the signals, so they outlive the
checkpoint."""
from __future__ import annotations

import functools
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional


class StopFlag:
    """Set by SIGTERM or the first Ctrl-C; the loop checks it after each step."""

    signum: Optional[int] = None


class Interrupted(Exception):
    """The run stopped on a signal after saving a checkpoint; `--resume` continues it."""

    def __init__(self, signum: int, step: int, folder: Path):
        self.signum, self.step, self.folder = signum, step, folder
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; checkpoint saved in {folder}")


@contextmanager
def stop_on_signals():
    """While training, SIGTERM and Ctrl-C ask the loop to finish its step and checkpoint; a second
    Ctrl-C stops at once. Outside the main thread (signals cannot be caught there) nothing changes."""
    import threading

    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked DataLoader worker: the training process decides, workers go on
            return
        if flag.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signum = signum
        os.write(sys.stderr.fileno(), f"\n{signal.Signals(signum).name}: finishing the current step, then saving "
                 "a checkpoint (Ctrl-C again to stop at once)\n".encode())

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def shield_workers(*loaders: Any) -> None:
    """Make the loaders' worker processes ignore SIGTERM / Ctrl-C. A scheduler may signal every process
    of a job; a worker that died first would fail the loop before it can checkpoint. The training
    process checkpoints, then ends its workers as usual."""
    for loader in loaders:
        loader.worker_init_fn = functools.partial(_ignore_stop_signals, loader.worker_init_fn)


def _ignore_stop_signals(previous: Any, worker_id: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if previous is not None:
        previous(worker_id)
