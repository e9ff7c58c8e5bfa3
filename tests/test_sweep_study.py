"""The sweep's Optuna side: pruning, seeded range search, runs reused only with the same recipe, workers
sharing one study (each run exactly once, a killed worker's run taken over), PostgreSQL, bad input."""
from __future__ import annotations

import csv
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from partial_ft.__main__ import main
from partial_ft.sweep import Options, run_sweep, tune

def _grid(tmp_path, name="g", **grid):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def _trials(out, name="sweep", storage=None):
    """Every trial of the sweep's studies: {study name: [(state, user attrs), ...]}."""
    import optuna

    from partial_ft.sweep.study import open_storage

    store = open_storage(storage, out)
    return {s.study_name: [(t.state.name, t.user_attrs) for t in store.get_all_trials(s._study_id)]
            for s in store.get_all_studies() if s.study_name.startswith(name + "/")}


def test_halving_prunes_losing_candidates_and_never_chooses_one(tiny_recipe, tmp_path):
    """lr 0.01 first (learns from epoch 2 on), then two that learn nothing: halving (first rung at epoch 2)
    stops both there, below the best so far; the choice, the final run and the cost columns say so."""
    base = tiny_recipe("base", train={"epochs": 3, "max_steps": None, "batch_size": 32, "progress": False})
    grid = _grid(tmp_path, seeds=[0], strategies=[{"name": "full"}], tune={"train.lr": [0.01, 1e-9, 1e-8]},
                 search={"pruner": "halving", "min_epochs": 2})
    out = tmp_path / "out"
    done = run_sweep(base, grid, out, options=Options(launcher="inprocess"))
    assert done.failures == []
    tune_trials = _trials(out)["sweep/tune/0"]
    assert [(s, a["candidate"]["train.lr"], a["epochs"]) for s, a in tune_trials] == [
        ("COMPLETE", 0.01, 3), ("PRUNED", 1e-9, 2), ("PRUNED", 1e-8, 2)]
    for _, attrs in tune_trials[1:]:  # stopped after epoch 2: no finished run, its last accuracy kept
        assert not (tmp_path / attrs["run_dir"] / "summary.json").exists() and 0 <= attrs["top1"] <= 1
    (row,) = csv.DictReader((out / "results.csv").open())
    assert float(row["train.lr"]) == 0.01
    assert (row["tune_trials"], row["tune_pruned"]) == ("3", "2") and float(row["tune_seconds"]) > 0
    # the carve-out is taken from all 1,437 digits first, then max_train_samples caps the rest at 256: 8 batches
    # of 32 an epoch; 3 + 2 + 2 epochs
    assert [a["steps"] for _, a in tune_trials] == [24, 16, 16] and row["tune_steps"] == "56"


def test_tpe_range_rerun_draws_and_chooses_the_same(tiny_recipe, tmp_path):
    """A log range searched by seeded TPE (through `tune`, the public one-configuration study): a rerun
    in another folder draws the same values and chooses the same one; records say state, epochs, top-1."""
    base = tiny_recipe("base", train={"max_steps": 2, "progress": False})
    space = {"train.lr": {"low": 1e-4, "high": 0.3, "log": True}}
    results = [tune(base, {"name": "head"}, space, tmp_path / f"run{k}", search={"trials": 3, "seed": 7})
               for k in range(2)]
    assert [t.params for t in results[0].trials] == [t.params for t in results[1].trials]
    assert len({t.params["train.lr"] for t in results[0].trials}) == 3
    assert all(1e-4 <= t.params["train.lr"] <= 0.3 and t.state == "complete" and t.epochs == 1
               for t in results[0].trials)
    assert results[0].chosen == results[1].chosen and results[0].top1 == max(t.top1 for t in results[0].trials)


def test_a_finished_run_is_reused_only_with_the_same_recipe(tiny_recipe, tmp_path):
    """A rerun with other overrides trains again (its tables follow); the same sweep again reuses."""
    base = tiny_recipe("base", strategy={"name": "head"})
    grid = _grid(tmp_path, seeds=[0], strategies=[{"name": "head"}], overrides=["train.max_steps=1"])
    out, summary = tmp_path / "out", tmp_path / "out" / "head_seed0" / "summary.json"
    inprocess = Options(launcher="inprocess")
    run_sweep(base, grid, out, options=inprocess)
    first = summary.stat().st_mtime_ns
    run_sweep(base, grid, out, ["train.max_steps=2"], options=inprocess)
    assert summary.stat().st_mtime_ns != first and json.loads(summary.read_text())["steps"] == 2
    again = summary.stat().st_mtime_ns
    run_sweep(base, grid, out, ["train.max_steps=2"], options=inprocess)
    assert summary.stat().st_mtime_ns == again


WORKER_GRID = {"seeds": [0, 1], "overrides": ["train.max_steps=1"], "strategies": [{"name": "head"}, {"name": "bias"}],
               "tune": {"train.lr": [0.01, 0.1]}}


def _worker(base, grid, out, journal, *extra):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "partial_ft", "sweep", "--recipe", str(base), "--grid", str(grid),
                             "--out", str(out), "--storage", f"journal:{journal}", "--worker", "--launcher",
                             "inprocess", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _exactly_once(out, journal, runs):
    """Every run: one finished trial, one line in all workers' output, one run folder."""
    trials = _trials(out, storage=f"journal:{journal}")
    assert sorted(trials) == ["sweep/final", "sweep/tune/0", "sweep/tune/1"]
    complete = [a for ts in trials.values() for s, a in ts if s == "COMPLETE"]
    keys = [(a["kind"], a["config"], a.get("seed"), a.get("order")) for a in complete]
    assert len(keys) == len(set(keys)) == runs
    assert len(list(out.glob("**/summary.json"))) == runs
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2 and all(r["seeds"] == "2" and r["tune_trials"] == "2" for r in rows)
    return trials


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_on_one_study_run_every_run_exactly_once(tiny_recipe, tmp_path, capsys, workers):
    base, grid = tiny_recipe("base"), _grid(tmp_path, **WORKER_GRID)
    out, journal = tmp_path / "out", tmp_path / "study.journal"
    procs = [_worker(base, grid, out, journal) for _ in range(workers)]
    outputs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0] * workers, [e[-2000:] for _, e in outputs]
    trials = _exactly_once(out, journal, 8)
    assert all(s == "COMPLETE" for ts in trials.values() for s, _ in ts)  # no spare trial was ever made
    lines = [line for o, _ in outputs for line in o.splitlines() if " val_top1 " in line and "done," in line]
    assert len(lines) == 8 and not any("finished before" in line for line in lines)
    # --report writes the same tables from the study; --status counts every run done
    args = ["sweep", "--recipe", str(base), "--grid", str(grid), "--out", str(out), "--storage", f"journal:{journal}"]
    table = (out / "results.csv").read_text()
    (out / "results.csv").unlink()
    assert main([*args, "--report"]) == 0 and (out / "results.csv").read_text() == table
    capsys.readouterr()
    assert main([*args, "--status"]) == 0
    status = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert status["tune"] == ["4", "0", "0", "0", "0"] and status["final"] == ["4", "0", "0", "0", "0"]
    assert status["all"] == ["8", "0", "0", "0", "0"]


def test_a_killed_workers_run_is_taken_over_and_resumed(tiny_recipe, tmp_path):
    """SIGKILL a worker mid-run (after its first checkpoint): a new worker waits out its heartbeat, takes
    the run over, resumes it from the checkpoint, and finishes the sweep; nothing ran twice."""
    base = tiny_recipe("base", train={"epochs": 2, "max_steps": None, "batch_size": 64, "progress": False})
    grid = _grid(tmp_path, seeds=[0], strategies=[{"name": "head"}], tune={"train.lr": [0.01, 0.1]})
    out, journal = tmp_path / "out", tmp_path / "study.journal"
    first = _worker(base, grid, out, journal, "--heartbeat", "1")
    deadline = time.monotonic() + 600
    while not list(out.glob("tune/**/checkpoints/latest")) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    first.kill()  # SIGKILL: no clean-up of any kind
    first.wait()
    second = _worker(base, grid, out, journal, "--heartbeat", "1")
    text, err = second.communicate(timeout=900)
    assert second.returncode == 0, err[-2000:]
    assert "took over tune head {'train.lr': 0.01}: its worker stopped" in text
    # an in-process run prints into the .log beside its folder
    assert "resuming from" in (out / "tune" / "head_lr-0.01_seed0.log").read_text()
    trials = _trials(out, storage=f"journal:{journal}")
    tune0 = trials["sweep/tune/0"]
    assert [s for s, _ in tune0] == ["FAIL", "COMPLETE", "COMPLETE"] and tune0[2][1]["takes_over"] == 0
    assert [s for s, _ in trials["sweep/final"]] == ["COMPLETE"]
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 1


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server (Debian's postgresql package) in a folder of its own, run as user
    postgres; its URL. Skipped where the package (or root, to switch users) is absent."""
    initdb = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not initdb or os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL (Debian's postgresql package, run as root for runuser) is not installed here")
    pytest.importorskip("psycopg")  # what SQLAlchemy 2 uses for postgresql://
    import pwd

    user = pwd.getpwnam("postgres")
    home = Path(tempfile.mkdtemp(prefix="partial_ft-pg-"))  # not under pytest's root-only tmp folders
    os.chown(home, user.pw_uid, user.pw_gid)
    pg, port, as_pg = initdb[-1].parent, 54000 + os.getpid() % 1000, ["runuser", "-u", "postgres", "--"]
    try:
        subprocess.run([*as_pg, str(pg / "initdb"), "-D", str(home / "data"), "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True)
        subprocess.run([*as_pg, str(pg / "pg_ctl"), "-D", str(home / "data"), "-w", "-l", str(home / "log"), "-o",
                        f"-p {port} -k {home} -c listen_addresses=''", "start"], check=True, capture_output=True)
        yield f"postgresql://postgres@/postgres?host={home}&port={port}"
    finally:
        subprocess.run([*as_pg, str(pg / "pg_ctl"), "-D", str(home / "data"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_a_sweep_on_a_postgresql_study(tiny_recipe, tmp_path, postgres):
    grid = _grid(tmp_path, seeds=[0], strategies=[{"name": "head"}], overrides=["train.max_steps=1"],
                 tune={"train.lr": [0.01, 0.1]})
    out = tmp_path / "out"
    assert run_sweep(tiny_recipe("base"), grid, out, storage=postgres, options=Options(launcher="inprocess")).failures == []
    trials = _trials(out, storage=postgres)
    assert [s for s, _ in trials["sweep/tune/0"]] == ["COMPLETE"] * 2 and [s for s, _ in trials["sweep/final"]] == ["COMPLETE"]
    assert not (out / "study.journal").exists() and (out / "results.csv").is_file()


BAD = [  # (grid changes, extra CLI arguments, what the one error line says)
    ({}, ["--storage", "not a url"], "is not a storage URL"),
    ({}, ["--storage", "postgresql://u:secret@127.0.0.1:1/db"], "postgresql://u:***@127.0.0.1:1/db: cannot open it"),
    ({}, ["--storage", "nosuchdialect://x/y"], "cannot open it"),
    ({}, ["--storage", "journal:/no/such/folder/study.journal"], "is not a place for a journal file"),
    ({}, ["--worker"], "--worker needs --storage URL"),
    ({}, ["--jobs", "0"], "--jobs must be >= 1"),
    ({"tune": {"train.lr": {"low": 0.1, "high": 0.01}}}, [], "low must be below high"),
    ({"tune": {"train.lr": {"low": 0, "high": 0.1, "log": True}}}, [], "a log range needs low > 0"),
    ({"tune": {"train.lr": {"low": 1e-3, "hi": 0.1}}}, [], "unknown range key 'hi' (did you mean 'high'?)"),
    ({"tune": {"train.lr": {"low": 1e-3, "high": 0.1}}, "search": {"trials": 0}}, [], "trials must be an integer >= 1"),
    ({"tune": {"train.lr": [0.1]}, "search": {"pruner": "halfing"}}, [], "unknown pruner 'halfing' (did you mean 'halving'?)"),
    ({"tune": {"train.lr": [0.1]}, "search": {"sampler": "cmaes"}}, [], "unknown sampler 'cmaes'"),
    ({"tune": {"train.lr": [0.1]}, "search": {"trails": 2}}, [], "search: unknown key 'trails' (did you mean 'trials'?)"),
    ({"tune": {"train.lr": {"low": 1e-3, "high": 0.1}}, "search": {"sampler": "grid"}}, [], "sampler grid needs listed"),
    ({"tune": {"train.lr": [0.1, 0.2]}, "search": {"trials": 3}}, [], "runs each of the 2 candidates once"),
    ({"datasets": [{"name": "..", "overrides": []}]}, [], "a plain folder name"),
]


@pytest.mark.parametrize("grid,args,message", BAD)
def test_bad_input_is_one_error_line_and_nothing_written(tiny_recipe, tmp_path, capsys, grid, args, message):
    path = _grid(tmp_path, **{"strategies": [{"name": "head"}], **grid})
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--recipe", str(tiny_recipe("base")), "--grid", str(path), "--out", str(out), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def test_a_worker_of_another_grid_and_a_second_sweep_on_one_folder_are_refused(tiny_recipe, tmp_path, capsys):
    from partial_ft.sweep.study import create_meta, open_storage

    base, grid = tiny_recipe("base"), _grid(tmp_path, strategies=[{"name": "head"}])
    journal = tmp_path / "shared.journal"
    create_meta(open_storage(f"journal:{journal}", tmp_path), "sweep", "0123456789abcdef")  # another grid's
    before = journal.read_bytes()
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        main(["sweep", "--recipe", str(base), "--grid", str(grid), "--out", str(out), "--storage", f"journal:{journal}",
              "--worker"])
    assert "was set up for another grid or base recipe (fingerprint 0123456789abcdef" in capsys.readouterr().err
    assert not out.exists() and journal.read_bytes() == before
    out.mkdir()  # a sweep running in out holds its lock
    fd = os.open(out / ".sweep.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(SystemExit) as e:
            main(["sweep", "--recipe", str(base), "--grid", str(grid), "--out", str(out)])
        assert e.value.code == 2 and "another sweep is running in" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [".sweep.lock"]
    finally:
        os.close(fd)


def test_deadline_stops_the_running_trial_at_its_epoch_end_and_starts_no_other(tiny_recipe, tmp_path, monkeypatch):
    """Options.deadline (advise's --time): the clock is past it from the first epoch's end on, so the first
    candidate stops there (recorded as pruned, never chosen) and the second never starts."""
    from partial_ft.sweep import engine

    looks = []
    monkeypatch.setattr(engine, "past", lambda deadline: looks.append(deadline) or len(looks) > 1)
    base = tiny_recipe("base", train={"epochs": 3, "max_steps": None, "batch_size": 32, "progress": False})
    result = tune(base, {"name": "head"}, {"train.lr": [0.01, 0.001]}, tmp_path / "t",
                  options=Options(launcher="inprocess", deadline=1.0))
    assert [(t.params, t.state, t.epochs) for t in result.trials] == [({"train.lr": 0.01}, "pruned", 1)]
    assert result.chosen is None and set(looks) == {1.0}
    # the same call with time: the stopped run is continued from its checkpoint (a new trial takes it over:
    # it trains epochs 2 and 3), the other starts; both finish, and the study holds these two
    monkeypatch.setattr(engine, "past", lambda deadline: False)
    again = tune(base, {"name": "head"}, {"train.lr": [0.01, 0.001]}, tmp_path / "t",
                 options=Options(launcher="inprocess"))
    assert sorted((t.params["train.lr"], t.state, t.epochs) for t in again.trials) == [(0.001, "complete", 3),
                                                                                       (0.01, "complete", 2)]
    stopped = next(t for t in again.trials if t.params["train.lr"] == 0.01)
    assert "resuming from" in Path(stopped.run_dir + ".log").read_text()


def test_qmc_sampler_spreads_a_few_trials_across_a_log_range():
    """sampler: qmc (advise's): after the first trial (a seeded random draw that fixes the search space), the
    next four Sobol points fall one in each quarter of the log range, where random draws may cluster."""
    import math

    import optuna

    from partial_ft.sweep.search import Search

    search, storage = Search(trials=5, sampler="qmc", seed=0), optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="s", storage=storage, direction="maximize")
    fractions = []
    for number in range(5):
        study = optuna.load_study(study_name="s", storage=storage, sampler=search.make_sampler(number))
        trial = study.ask()
        fractions.append(math.log(trial.suggest_float("train.lr", 1e-4, 0.3, log=True) / 1e-4) / math.log(3000))
        study.tell(trial, 0.5)
    assert sorted(int(f * 4) for f in fractions[1:]) == [0, 1, 2, 3]
