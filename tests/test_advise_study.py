"""advise's tuning studies: one study per candidate that later calls extend (no trial trained twice), and
several advise processes as workers of one storage (each trial exactly once). A tiny task: test_resnet on
128 digits to train on, 32 in the carve-out."""
from __future__ import annotations

import os
import subprocess
import sys

import optuna
from optuna.trial import TrialState

from conftest import ROOT
from partial_ft import recipe as recipes
from partial_ft.advise.table import Row
from partial_ft.advise.tuning import Tuner
from partial_ft.sweep import study

TASK = {"data": {"max_train_samples": 160, "max_val_samples": 64},  # a trial: 2 steps
        "train": {"epochs": 1, "max_steps": 2, "batch_size": 32}}


def _files(folder):
    """Every file under `folder` with its modification time: what training again would change."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _tune_trials(storage):
    """Per advise tuning study (NAME/tune/0): its live trials (taken-over ones aside)."""
    names = [s.study_name for s in storage.get_all_studies() if s.study_name.endswith("/tune/0")]
    return {n: [t for t in storage.get_all_trials(storage.get_study_id_from_name(n))
                if t.number not in study.superseded(storage.get_all_trials(storage.get_study_id_from_name(n)))]
            for n in names}


def test_a_candidates_trials_live_in_one_study_that_later_calls_extend(tiny_recipe, tmp_path):
    """Two calls of 2 trials: one study of 4 trials (orders 0-3), 4 run folders, the first call's runs
    untouched by the second (each trained once), 4 different learning rates."""
    recipe = recipes.load(tiny_recipe("task", **TASK), ["data.tune_fraction=0.2", "data.tune_seed=0"])
    out = tmp_path / "advice"
    out.mkdir()
    tuner = Tuner(None, False, "inprocess", out, 32, 0.2, 0)
    row = Row("bias", {"name": "bias"}, resolved={"name": "bias"})
    tuner.trial(row, recipe.to_dict(), 2)
    assert row.trials == 2
    first = {p: _files(p) for p in (out / "tune").iterdir() if p.is_dir()}
    assert len(first) == 2
    tuner.trial(row, recipe.to_dict(), 2)
    assert row.trials == 4
    trials = _tune_trials(study.open_storage(None, out))
    assert list(trials) == ["advise-bias/tune/0"]
    (live,) = trials.values()
    assert sorted(t.user_attrs["order"] for t in live) == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in live)
    assert len({t.user_attrs["run_dir"] for t in live}) == 4 and len({t.params["train.lr"] for t in live}) == 4
    assert len([p for p in (out / "tune").iterdir() if p.is_dir()]) == 4
    assert {p: _files(p) for p in first} == first  # the first call's runs were not trained again


def _advise_worker(recipe, out, journal):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(ROOT)}
    cmd = ["nice", "-n", "19", sys.executable, "-m", "partial_ft", "advise", "--recipe", str(recipe), "--out", str(out),
           "--budget", "3000", "--time", "10m", "--trials", "2", "--storage", f"journal:{journal}", "--worker"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_advise_workers_share_the_studies_and_run_each_trial_once(tiny_recipe, tmp_path):
    """Two advise processes on one journal storage (a budget of 3,000: the probe and bias fit, full is the
    reference; 2 trials each, time enough for all): both end with a report; the studies hold bias's and
    full's 2 trials each; every trial has its own run folder and every run folder one trial (none trained
    twice); each worker measured into its own folder (a shared one would be in use by the other)."""
    recipe, out, journal = tiny_recipe("task", **TASK), tmp_path / "advice", tmp_path / "study.journal"
    procs = [_advise_worker(recipe, out, journal) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-3000:] for _, e in outputs]
    assert all("**Recommendation.**" in o for o, _ in outputs)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = [t for ts in _tune_trials(storage).values() for t in ts]
    assert trials and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert sorted(t.user_attrs["where"].split()[1] for t in trials) == ["bias", "bias", "full", "full"]
    run_dirs = sorted(t.user_attrs["run_dir"] for t in trials)
    # one folder per trial, one trial per folder
    assert run_dirs == sorted(str(p) for p in (out / "tune").iterdir() if p.is_dir())
    lines = [line for o, _ in outputs for line in o.splitlines()]
    assert not any("finished before: skipped" in line or "cannot run" in line for line in lines)
    assert len(list((out / "measure").iterdir())) == 2
