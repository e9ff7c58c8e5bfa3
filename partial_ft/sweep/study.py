"""The sweep's Optuna studies: where they live, how they are laid out, and how workers share them.

Layout, under one name (`--study`, default "sweep"):
    NAME                 the sweep itself: the fingerprint of its grid and base recipe, `ready` once set up
    NAME/tune/I          configuration I's tuning: one trial per candidate (or per draw from a range)
    NAME/final           every (configuration, seed) final run
    NAME/takeover/T      a claim: trial T's run was taken over after its worker stopped beating
    NAME/tune/I/slot/K   a claim: drawn trial K of configuration I was enqueued when a tuning study
                         was continued with more trials (`tune`)

Every run is a trial enqueued once, when the sweep is set up (by whichever process creates NAME first),
and claimed by moving it from WAITING to RUNNING, which the storage grants to one process only. Optuna's
GridSampler is not used for that: it may hand one grid point to two workers at once. A worker writes a
heartbeat into each trial it runs; a RUNNING trial whose heartbeat is older than three beats is failed
and enqueued again (its run folder, when shared, resumes from its last checkpoint), the claim of that
takeover being the creation of NAME/takeover/T, which also only one process can do.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ..errors import UserError, first_line

JOURNAL = "study.journal"  # the default storage: Optuna's journal file, in the sweep folder
READY_WAIT_SECONDS = 120  # how long a joining worker waits for the first one to finish enqueuing
MAXIMIZE = [optuna.study.StudyDirection.MAXIMIZE]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own line per run


def open_storage(url: Optional[str], out: Path) -> BaseStorage:
    """The storage: `url` (an SQLAlchemy URL such as postgresql://…, mysql://…, sqlite:///…, or
    journal:PATH for a journal file), or by default a journal file in the sweep folder.

    Why a journal file by default, not SQLite: SQLite relies on POSIX byte-range locks, which are broken
    or absent on many network file systems (SQLite's own documentation warns against NFS), and under
    concurrent writers it answers "database is locked". Optuna's journal file is an append-only log whose
    lock is the atomic creation of a symbolic link, which holds on NFS as on a local disk, and every
    process replays the same log: safe for several processes on one machine and across machines sharing
    a folder."""
    if url is None or url.startswith("journal:"):
        path = out / JOURNAL if url is None else Path(url.removeprefix("journal:").removeprefix("//"))
        if url is not None and (not path.parent.is_dir() or path.is_dir()):
            raise UserError(f"--storage {url}: {path.parent if not path.parent.is_dir() else path} is not a "
                            "place for a journal file (a file in an existing folder)")
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise UserError(f"--storage {url!r} is not a storage URL (postgresql://…, mysql://…, sqlite:///PATH or "
                        "journal:PATH)")
    try:
        # wrapped as optuna.load_study wraps it (its trial cache): the sweep's claims and the studies' trials
        # must go through one and the same storage object
        return optuna.storages.get_storage(optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url)))
    except Exception as e:  # SQLAlchemy: unknown dialect, missing driver, server unreachable, bad credentials
        raise UserError(f"--storage {_hide_password(url)}: cannot open it: {first_line(e)[:300]}") from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    # a server that does not answer is an error within seconds, not a hang
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}}
    if url.startswith("mysql"):
        return {"connect_args": {"connect_timeout": 10}}
    return {}


def _hide_password(url: str) -> str:
    head, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        return f"{head}{sep}{user}:***@{rest.split('@', 1)[1]}"
    return url


def fingerprint(*parts: Any) -> str:
    """A digest of what decides the sweep's runs (grid, base recipe, overrides), to compare workers by."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tune_name(name: str, index: int) -> str:
    return f"{name}/tune/{index}"


def final_name(name: str) -> str:
    return f"{name}/final"


def study_id(storage: BaseStorage, name: str) -> Optional[int]:
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


def create_meta(storage: BaseStorage, name: str, digest: str) -> bool:
    """Create the sweep's own study, holding `digest`; False when it exists already (another made it)."""
    try:
        sid = storage.create_new_study(MAXIMIZE, name)
    except DuplicatedStudyError:
        return False
    storage.set_study_user_attr(sid, "fingerprint", digest)
    return True


def check_same(storage: BaseStorage, name: str, digest: str, what: str) -> None:
    """Refuse a study `name` set up for another grid or base recipe (a study not there yet is fine)."""
    sid = study_id(storage, name)
    theirs = None if sid is None else storage.get_study_user_attrs(sid).get("fingerprint")
    if theirs is not None and theirs != digest:
        raise UserError(f"study {name!r} in {what} was set up for another grid or base recipe (fingerprint "
                        f"{theirs}, this one {digest}); run the same grid, recipe and overrides, or pass another "
                        "--study")


def wait_ready(storage: BaseStorage, name: str, digest: str, what: str) -> None:
    """Wait until the sweep's studies are set up; refuse one set up for another grid or base recipe."""
    sid = storage.get_study_id_from_name(name)
    deadline = time.monotonic() + READY_WAIT_SECONDS
    while True:
        check_same(storage, name, digest, what)
        if storage.get_study_user_attrs(sid).get("ready"):
            return
        if time.monotonic() > deadline:
            raise UserError(f"study {name!r} in {what} was never finished setting up (its first process stopped "
                            "early?); delete it or pass another --study")
        time.sleep(1)


def set_ready(storage: BaseStorage, name: str) -> None:
    storage.set_study_user_attr(storage.get_study_id_from_name(name), "ready", True)


def delete_sweep(storage: BaseStorage, name: str) -> None:
    """Remove every study of the sweep `name` (a plain sweep whose grid or recipe changed starts anew)."""
    for summary in storage.get_all_studies():
        if summary.study_name == name or summary.study_name.startswith(name + "/"):
            storage.delete_study(summary._study_id)


def claim(storage: BaseStorage, sid: int, accept=lambda trial: True) -> Optional[tuple[int, FrozenTrial]]:
    """Move one accepted WAITING trial to RUNNING for this process; the storage grants each to one process."""
    for trial in storage.get_all_trials(sid, deepcopy=False, states=(TrialState.WAITING,)):
        if not accept(trial):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(sid, trial.number)
        try:
            if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                return trial_id, storage.get_trial(trial_id)
        except UpdateFinishedTrialError:
            continue
    return None


def superseded(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the trials another trial took over (their runs live on in the later trial)."""
    return {t.user_attrs["takes_over"] for t in trials if "takes_over" in t.user_attrs}


def stale(trial: FrozenTrial, now: float, beat: float) -> bool:
    """A RUNNING trial whose worker missed three heartbeats (its own period, or `beat` when it stopped
    before its first: then counted from the trial's start)."""
    last = trial.system_attrs.get("heartbeat")
    if last is None:
        last = trial.datetime_start.timestamp() if trial.datetime_start else now
    return now - last > 3 * trial.system_attrs.get("heartbeat_seconds", beat)


def take_over(storage: BaseStorage, name: str, sid: int, trial: FrozenTrial) -> bool:
    """Fail `trial` (its worker is gone) and enqueue its run again; only the process whose claim succeeds
    does it. Returns whether this process did."""
    trial_id = storage.get_trial_id_from_study_id_trial_number(sid, trial.number)
    try:
        storage.create_new_study(MAXIMIZE, f"{name}/takeover/{trial_id}")
    except DuplicatedStudyError:
        return False
    enqueue(storage, sid, trial.params or trial.system_attrs.get("fixed_params", {}),
            {**{k: v for k, v in trial.user_attrs.items() if k in ("config", "seed", "kind", "order")},
             "takes_over": trial.number})
    try:
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        pass  # it finished after all; the new trial finds its run folder finished and reuses it
    return True


def continue_tuning(storage: BaseStorage, sweep: str, index: int, trials: Optional[int]) -> None:
    """Continue configuration `index`'s tuning study in the sweep `sweep`: a run stopped by the deadline (not
    judged by the pruner) is taken over, so its run resumes from its checkpoint; then drawn trials are
    enqueued up to `trials` (None: candidates are fixed), each slot K once across processes (its claim
    is the creation of the study NAME/slot/K, which only one process can do)."""
    name = tune_name(sweep, index)
    sid = storage.get_study_id_from_name(name)
    trials_now = storage.get_all_trials(sid, deepcopy=False)
    gone = superseded(trials_now)
    for t in trials_now:
        if t.number not in gone and t.user_attrs.get("stopped") == "deadline":
            take_over(storage, sweep, sid, t)
    have = {t.user_attrs.get("order") for t in trials_now}
    for k in range(trials or 0):
        if k in have:
            continue
        try:
            storage.create_new_study(MAXIMIZE, f"{name}/slot/{k}")
        except DuplicatedStudyError:
            continue
        enqueue(storage, sid, {}, {"config": index, "kind": "tune", "order": k})


def enqueue(storage: BaseStorage, sid: int, params: dict, user_attrs: dict) -> None:
    """A WAITING trial with fixed `params` (none: the sampler draws them when it runs)."""
    storage.create_new_trial(sid, template_trial=optuna.trial.create_trial(
        state=TrialState.WAITING, system_attrs={"fixed_params": params} if params else {}, user_attrs=user_attrs))


class Heartbeat:
    """A thread that writes the time into every trial this process runs, every `seconds`."""

    def __init__(self, storage: BaseStorage, seconds: float):
        self.storage, self.seconds = storage, seconds
        self.trials: set[int] = set()
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="sweep-heartbeat")
        self.thread.start()

    def add(self, trial_id: int) -> None:
        self.storage.set_trial_system_attr(trial_id, "heartbeat_seconds", self.seconds)
        self.storage.set_trial_system_attr(trial_id, "heartbeat", time.time())
        with self.lock:
            self.trials.add(trial_id)

    def remove(self, trial_id: int) -> None:
        with self.lock:
            self.trials.discard(trial_id)

    def _beat(self) -> None:
        while not self.done.wait(self.seconds):
            with self.lock:
                ids = list(self.trials)
            for trial_id in ids:
                try:
                    self.storage.set_trial_system_attr(trial_id, "heartbeat", time.time())
                except Exception:  # finished meanwhile, or the storage hiccuped: the next beat tries again
                    pass

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
