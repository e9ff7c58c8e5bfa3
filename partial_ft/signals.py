"""Stopping cleanly on SIGTERM / Ctrl-C: the loop finishes its step, checkpoints, and raises Interrupted;
`--resume` continues from that checkpoint. DataLoader workers ignore the signals, so they outlive the
checkpoint."""
from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional


WATCHED = "PARTIAL_FT_STOP_WITH"  # a sweep's process id: the runs it starts stop when it is gone


def stop_with_watched() -> None:
    """In a run a sweep started (its pid in $PARTIAL_FT_STOP_WITH): when that process is gone, killed outright
    (SIGKILL, or a SIGTERM that ended it before it could stop its runs), SIGTERM this one, which checkpoints
    and stops; otherwise the run would train on unwatched in its own session, and the worker that takes it
    over would find its folder busy. The kernel's PR_SET_PDEATHSIG would need preexec_fn, which is unsafe
    in the sweep's threads; a poll once a second is not."""
    pid = os.environ.get(WATCHED, "")
    if not pid.isdigit():
        return

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:  # alive (a process of another user): keep watching
                pass

    threading.Thread(target=watch, name="partial_ft-watch-sweep", daemon=True).start()


class StopFlag:
    """Set by SIGTERM or the first Ctrl-C; the loop checks it after each step. `signum` may also be set
    by the program (a sweep's pruner stops a run as a scheduler would); `caught` is only a real signal."""

    signum: Optional[int] = None
    caught: Optional[int] = None


class Interrupted(Exception):
    """The run stopped on a signal after saving a checkpoint; `--resume` continues it."""

    def __init__(self, signum: int, step: int, folder: Path):
        self.signum, self.step, self.folder = signum, step, folder
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; checkpoint saved in {folder}")


class Stopped(Exception):
    """The run stopped on a signal during a one-off pass (feature extraction, a scoring pass) that has no
    checkpoint of its own; `--resume` starts the run again from its last checkpoint, or the beginning."""

    def __init__(self, signum: int, during: str):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name} during {during}; nothing of it was kept")


_active: Optional[StopFlag] = None  # the flag of the stop_on_signals block in force, if any


def raise_if_stopped(during: str) -> None:
    """For long one-off passes: stop within one batch of a SIGTERM / Ctrl-C instead of at the pass's end."""
    if _active is not None and _active.signum is not None:
        raise Stopped(_active.signum, during)


@contextmanager
def stop_on_signals():
    """While training, SIGTERM and Ctrl-C ask the loop to finish its step and checkpoint; a second
    Ctrl-C stops at once. Outside the main thread (signals cannot be caught there) nothing changes.
    Blocks nest: a signal caught by an inner block is passed to the outer one when the inner one ends."""
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
        flag.signum = flag.caught = signum
        os.write(sys.stderr.fileno(), f"\n{signal.Signals(signum).name}: finishing the current step, then saving "
                 "a checkpoint (Ctrl-C again to stop at once)\n".encode())

    global _active
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    outer, _active = _active, flag
    try:
        yield flag
    finally:
        _active = outer
        for s, h in previous.items():
            signal.signal(s, h)
        if outer is not None and outer.signum is None and flag.caught is not None:  # a run inside advise:
            outer.signum = outer.caught = flag.caught  # its signal stops the outer one too; a pruned stop does not


@contextmanager
def deferred():
    """While a run finishes (card, curve, delta, cleanup, finished mark), SIGTERM and Ctrl-C wait: they
    are delivered when the block ends, so a run is finished as one step or not at all."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for signum in dict.fromkeys(caught):
            os.kill(os.getpid(), signum)  # now, to whatever handled it before


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
