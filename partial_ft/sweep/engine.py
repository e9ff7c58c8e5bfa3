"""A sweep process: set the study up (or join it), then claim runs and train them until none is left —
tuning runs first (each reporting its carve-out top-1 after every epoch to its study's pruner), then the
final runs of configurations whose tuning is done — and write the tables."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ..rundir import SUMMARY
from . import records, study
from .grid import candidates
from .jobs import Outcome, kept, run_job
from .plan import Plan
from .search import Range

IDLE_SECONDS = 1.0  # between looks at the study while other workers hold the remaining runs


@dataclass
class Options:
    """How this process runs its share: launcher, runs at once, heartbeat period (seconds)."""

    launcher: str = "python"
    jobs: int = 1
    heartbeat: float = 60.0
    worker: bool = False  # one of several processes on one study (else: the only one)
    deadline: Optional[float] = None  # time.time() after which no run starts and a tuning run stops at the end
    # of its epoch (advise's --time); a run stopped so is recorded as pruned: never chosen, continued by a rerun


def past(deadline: Optional[float]) -> bool:
    return deadline is not None and time.time() >= deadline


class Engine:
    """One process's view of a sweep's studies."""

    def __init__(self, plan: Plan, storage: BaseStorage, name: str, where: str):
        self.plan, self.storage, self.name, self.where = plan, storage, name, where
        self.search = plan.grid.search
        self._studies: dict[str, optuna.Study] = {}  # one sampler per study and process (seeded draws)
        self._lock = threading.Lock()
        self.printed = 0

    # ---------------------------------------------------------------- setting up

    @property
    def total(self) -> int:
        tuned = len(self.plan.configs) * self.search.trials if self.plan.grid.tune else 0
        return tuned + len(self.plan.configs) * len(self.plan.grid.seeds) * self.plan.finals

    def set_up(self, replace_other: bool) -> None:
        """Create and fill the studies, or join them; `replace_other`: a study of another grid or recipe
        under this name is replaced (the sweep's own default storage), else refused."""
        digest = self.plan.digest()
        if not study.create_meta(self.storage, self.name, digest):
            sid = self.storage.get_study_id_from_name(self.name)
            if replace_other and self.storage.get_study_user_attrs(sid).get("fingerprint") != digest:
                print(f"the grid, recipe or overrides changed since {self.where} was set up: a new study "
                      "(finished runs with the same recipe are reused)", flush=True)
                study.delete_sweep(self.storage, self.name)
                return self.set_up(False)
            study.wait_ready(self.storage, self.name, digest, self.where)
            self._extend()
            return None
        order = 0
        if self.plan.grid.tune:
            fixed = candidates(self.plan.grid.tune) if self.search.sampler == "grid" else [{}] * self.search.trials
            for i in range(len(self.plan.configs)):
                sid = self.storage.create_new_study(study.MAXIMIZE, study.tune_name(self.name, i))
                self.storage.set_study_user_attr(sid, "configuration", self.plan.configs[i].where())
                for n, params in enumerate(fixed):
                    study.enqueue(self.storage, sid, params, {"config": i, "kind": "tune", "order": n})
        sid = self.storage.create_new_study(study.MAXIMIZE, study.final_name(self.name))
        for i in range(len(self.plan.configs) if self.plan.finals else 0):
            for seed in self.plan.grid.seeds:
                study.enqueue(self.storage, sid, {}, {"config": i, "seed": seed, "kind": "final", "order": order})
                order += 1
        study.set_ready(self.storage, self.name)

    def _extend(self) -> None:
        """Continue each configuration's tuning (study.continue_tuning): runs the deadline stopped are
        queued again, and drawn trials are added up to `search.trials` (a tuning study's fingerprint leaves
        the count out, so `tune` with more trials continues it)."""
        for i in range(len(self.plan.configs) if self.plan.grid.tune else 0):
            drawn = None if self.search.sampler == "grid" else self.search.trials
            study.continue_tuning(self.storage, self.name, i, drawn)

    def restart(self, exclusive: bool, beat: float) -> None:
        """A plain sweep (no --worker): runs left RUNNING by a process that stopped (any, when the study is
        this folder's own, `exclusive`; else those that missed their heartbeats), failed runs, and finished
        runs whose folder lost its summary are queued again; the others are said to be done."""
        now = time.time()
        for sid in self._sids():
            for t in records.live(self.storage.get_all_trials(sid, deepcopy=False)):
                gone = t.state == TrialState.COMPLETE and not (Path(t.user_attrs.get("run_dir", "")) / SUMMARY).is_file()
                dead = t.state == TrialState.RUNNING and (exclusive or study.stale(t, now, beat))
                if dead or t.state == TrialState.FAIL and "where" in t.user_attrs or gone:
                    self._requeue(sid, t)
                elif t.state == TrialState.COMPLETE:
                    print(f"{t.user_attrs['where']}: val_top1 {t.value:.4f}  (finished before: skipped)", flush=True)

    def _requeue(self, sid: int, t: FrozenTrial) -> None:
        keep = {k: v for k, v in t.user_attrs.items() if k in ("config", "seed", "kind", "order")}
        study.enqueue(self.storage, sid, t.params or t.system_attrs.get("fixed_params", {}),
                      {**keep, "takes_over": t.number})
        if t.state == TrialState.RUNNING:
            self.storage.set_trial_state_values(
                self.storage.get_trial_id_from_study_id_trial_number(sid, t.number), TrialState.FAIL)

    def _sids(self) -> list[int]:
        names = [study.tune_name(self.name, i) for i in range(len(self.plan.configs))] if self.plan.grid.tune else []
        return [sid for sid in (study.study_id(self.storage, n) for n in [*names, study.final_name(self.name)])
                if sid is not None]

    def _study(self, name: str) -> optuna.Study:
        with self._lock:
            if name not in self._studies:
                self._studies[name] = optuna.load_study(study_name=name, storage=self.storage,
                                                        sampler=self.search.make_sampler(),
                                                        pruner=self.search.make_pruner())
            return self._studies[name]

    def _trial_study(self, name: str, number: int) -> optuna.Study:
        """The study as trial `number` draws from it: its sampler seeded for that trial (search.make_sampler)."""
        return optuna.load_study(study_name=name, storage=self.storage, sampler=self.search.make_sampler(number),
                                 pruner=self.search.make_pruner())

    # ---------------------------------------------------------------- working

    def work(self, options: Options) -> None:
        """Claim and train runs until every run of the sweep has finished (here or elsewhere)."""
        beat = study.Heartbeat(self.storage, options.heartbeat)
        devices = _devices(options.jobs)
        try:
            if options.jobs == 1:  # in this thread: an in-process run's SIGTERM handling needs the main thread
                self._loop(options, beat, None)
                return
            threads = [threading.Thread(target=self._loop, args=(options, beat, devices[k])) for k in range(options.jobs)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            beat.stop()

    def _loop(self, options: Options, beat: study.Heartbeat, device: Optional[str]) -> None:
        while not past(options.deadline):
            claimed = self._claim()
            if claimed is not None:
                self._run(*claimed, options, beat, device)
                continue
            if self._all_finished(options.worker and options.heartbeat):
                return
            time.sleep(IDLE_SECONDS)

    def _claim(self) -> Optional[tuple[str, int, tuple[int, FrozenTrial]]]:
        if self.plan.grid.tune:
            for i in range(len(self.plan.configs)):
                sid = study.study_id(self.storage, study.tune_name(self.name, i))
                trial = study.claim(self.storage, sid)
                if trial is not None:
                    return study.tune_name(self.name, i), sid, trial
        name = study.final_name(self.name)
        sid = self.storage.get_study_id_from_name(name)
        ready = {}

        def tuned(t: FrozenTrial) -> bool:
            i = t.user_attrs["config"]
            if i not in ready:
                ready[i] = not self.plan.grid.tune or records.tuning(self.storage, self.name, i).done
            return ready[i]

        trial = study.claim(self.storage, sid, tuned)
        return None if trial is None else (name, sid, trial)

    def _all_finished(self, beat: float) -> bool:
        """Nothing waiting or running anywhere; a worker (`beat`: its heartbeat period; 0: not a worker)
        takes over runs whose worker stopped beating."""
        busy = False
        now = time.time()
        for sid in self._sids():
            for t in self.storage.get_all_trials(sid, deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
                busy = True
                if beat and t.state == TrialState.RUNNING and study.stale(t, now, beat) and \
                        study.take_over(self.storage, self.name, sid, t):
                    print(f"took over {t.user_attrs.get('where', f'trial {t.number}')}: its worker stopped",
                          flush=True)
        return not busy

    def _run(self, name: str, sid: int, claimed: tuple[int, FrozenTrial], options: Options, beat: study.Heartbeat,
             device: Optional[str]) -> None:
        trial_id, frozen = claimed
        trial = optuna.Trial(self._trial_study(name, frozen.number), trial_id)
        beat.add(trial_id)
        try:
            i = frozen.user_attrs["config"]
            if frozen.user_attrs["kind"] == "tune":
                outcome, attrs = self._tune(trial, i, options, device)
            else:
                outcome, attrs = self._final(trial, i, frozen.user_attrs["seed"], options, device)
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            trial.set_user_attr("state", outcome.state)
            self._tell(trial, outcome)
        finally:
            beat.remove(trial_id)
        self._print(attrs["where"], outcome)

    def _tune(self, trial: optuna.Trial, i: int, options: Options, device: Optional[str]) -> tuple[Outcome, dict]:
        candidate = {key: _suggest(trial, key, space) for key, space in self.plan.grid.tune.items()}
        job = self.plan.tune_job(i, candidate)
        trial.set_user_attr("where", job.where)
        trial.set_user_attr("candidate", candidate)

        def report(epoch: int, top1: float) -> bool:
            trial.report(top1, epoch)
            if trial.should_prune():
                return True
            if past(options.deadline):  # not judged, only out of time: the next call continues it
                trial.set_user_attr("stopped", "deadline")
                return True
            return False

        outcome = run_job(job, options.launcher, report, device)
        return outcome, _attrs(job.where, job.run_dir, outcome)

    def _final(self, trial: optuna.Trial, i: int, seed: int, options: Options,
               device: Optional[str]) -> tuple[Outcome, dict]:
        chosen: Optional[tuple[dict, float]] = ({}, None)
        if self.plan.grid.tune:
            chosen = records.tuning(self.storage, self.name, i).choice()
        if chosen is None:
            where = f"{self.plan.configs[i].where()} seed {seed}"
            return Outcome("failed", error="every tuning candidate failed"), {"where": where}
        job = self.plan.final_job(i, seed, chosen[0])
        trial.set_user_attr("where", job.where)
        outcome = run_job(job, options.launcher, None, device)
        attrs = _attrs(job.where, job.run_dir, outcome)
        if outcome.summary is not None:
            attrs.update(summary=kept(outcome.summary), chosen=chosen[0], tune_top1=chosen[1],
                         dataset=job.extra["dataset"])
        return outcome, attrs

    def _tell(self, trial: optuna.Trial, outcome: Outcome) -> None:
        s = self._study(trial.study.study_name)
        if outcome.state in ("complete", "reused"):
            s.tell(trial, outcome.top1, skip_if_finished=True)
        else:
            s.tell(trial, state=TrialState.PRUNED if outcome.state == "pruned" else TrialState.FAIL,
                   skip_if_finished=True)

    def _print(self, where: str, o: Outcome) -> None:
        c = records.counts(self.storage, self.name, len(self.plan.configs), bool(self.plan.grid.tune), self.total)
        if o.state == "failed":
            text = f"FAILED: {o.error}"
        elif o.state == "pruned":
            text = f"pruned after epoch {o.epochs}: val_top1 {o.top1:.4f}"
        else:
            text = f"val_top1 {o.top1:.4f}" + (f"  learned {o.summary['learned_params']:,}" if o.summary else "")
            text += "  (finished before: skipped)" if o.state == "reused" else ""
        print(f"{where}: {text}  {c['all'].line()}", flush=True)


def _attrs(where: str, run_dir: Any, o: Outcome) -> dict[str, Any]:
    attrs = {"where": where, "run_dir": str(run_dir), "epochs": o.epochs, "seconds": round(o.seconds, 3),
             "steps": o.steps}
    return {**attrs, **({"error": o.error} if o.error else {}), **({"top1": o.top1} if o.top1 is not None else {})}


def _suggest(trial: optuna.Trial, key: str, space: Any) -> Any:
    if isinstance(space, Range) and isinstance(space.distribution(), optuna.distributions.IntDistribution):
        return trial.suggest_int(key, space.low, space.high)
    if isinstance(space, Range):
        return trial.suggest_float(key, space.low, space.high, log=space.log)
    return trial.suggest_categorical(key, space)


def _devices(n: int) -> list[Optional[str]]:
    """One GPU per concurrent run where there are at least as many GPUs as runs at once."""
    if n > 1:
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() >= n:
            return [str(i) for i in range(n)]
    return [None] * n
