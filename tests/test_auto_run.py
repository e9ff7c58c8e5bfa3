"""`auto` in a training run: the scoring pass is timed and printed, its selection is recorded, and the
delta, eval, export and --resume rebuild it without data and without scoring again; SIGTERM during the
scoring pass stops it within seconds, before anything is written."""
from __future__ import annotations

import json
import signal
import time

import pytest
import timm
import torch
from conftest import run_cli

from partial_ft import collective, delta, gradients, load_delta, merged_state_dict, train
from partial_ft import recipe as recipes
from partial_ft.models import build
from partial_ft.partial import learned_masks
from partial_ft.strategies import Gradients

AUTO = {"name": "auto", "budget": 0.05, "batches": 3}
TIMING = {"train_seconds", "train_images_per_second", "peak_memory_bytes", "scoring_seconds", "delta_bytes"}


def _no_scoring(*args, **kwargs) -> Gradients:
    """A gradient source that fails when drawn from: rebuilding a recorded selection must not score."""
    def draw(model, n):
        raise AssertionError("scored again")
        yield
    return Gradients(draw, available=100)


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    """One finished `auto` run (trained in this process)."""
    from conftest import TINY, write_recipe

    tmp = tmp_path_factory.mktemp("auto")
    raw = {**TINY, "strategy": AUTO, "output": {"dir": str(tmp / "run")}}
    path = write_recipe(tmp / "auto.yaml", raw)
    summary = train.run(recipes.load(path))
    return tmp / "run", summary, path


def test_the_run_records_times_and_prints_the_scoring_pass(auto_run):
    run_dir, summary, _ = auto_run
    assert summary["scoring_seconds"] > 0
    plan = (run_dir / "plan.txt").read_text()
    assert "auto: budget 18,682 = classifier + norm 3,050 + " in plan and "scoring pass over 3 batches" in plan
    recorded = json.loads((run_dir / "strategy.json").read_text())
    info = delta.read_info(run_dir)
    assert info["strategy"] == recorded["strategy"] and info["strategy"]["selected"]
    assert summary["learned_params"] <= 18_682  # floor(0.05 x 373,658), head and norm included


def test_delta_eval_and_export_rebuild_without_scoring(auto_run, tmp_path, monkeypatch):
    run_dir, summary, _ = auto_run
    monkeypatch.setattr(gradients, "for_training", _no_scoring)
    model = load_delta(run_dir)  # apply_strategy without gradients: it would raise if it scored
    assert sum(int(m.sum()) for m in learned_masks(model).values()) == summary["learned_params"]
    # fixed entries are the base's, bit for bit
    info = delta.read_info(run_dir)
    base, _ = build(recipes.ModelCfg(**info["model"]), len(info["class_names"]), seed=info["seed"])
    masks, trained, start = learned_masks(model), merged_state_dict(model), base.state_dict()
    for key, mask in masks.items():
        assert torch.equal(trained[key][~mask], start[key][~mask]), key
    out = run_cli("export", str(run_dir), "--out", str(tmp_path / "plain.safetensors"))
    assert out.returncode == 0, out.stderr[-2000:]
    from safetensors.torch import load_file

    plain = timm.create_model("test_resnet", num_classes=len(info["class_names"]))
    plain.load_state_dict(load_file(str(tmp_path / "plain.safetensors")))
    ev = run_cli("eval", str(run_dir))
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads((run_dir / "eval.json").read_text())["val_top1"] == pytest.approx(summary["val_top1"])


def test_resume_rebuilds_the_recorded_selection_without_scoring(auto_run, tmp_path, monkeypatch):
    """Stop after the first checkpoint, resume with a gradient source that fails if drawn from: the
    resumed run ends where the straight one did."""
    _, straight, path = auto_run
    raw = recipes.load(path, [f"output.dir={tmp_path / 'resumed'}"])
    calls = {"n": 0}

    def stop_once(acc, stop):
        calls["n"] += 1
        if calls["n"] == 1:
            stop.signum = signal.SIGTERM
            return True
        return False

    monkeypatch.setattr(collective, "stop_requested", stop_once)
    with pytest.raises(train.Interrupted):
        train.run(raw)
    monkeypatch.setattr(gradients, "for_training", _no_scoring)
    resumed = train.run(raw, resume=True)
    assert {k: v for k, v in resumed.items() if k not in TIMING} == \
        {k: v for k, v in straight.items() if k not in TIMING}
    first = json.loads((tmp_path / "resumed" / "strategy.json").read_text())["scoring_seconds"]
    assert resumed["scoring_seconds"] == first > 0  # the first session's pass, as recorded


@pytest.mark.parametrize("overrides, message", [
    (["strategy.batches=1000"], "strategy auto: batches is 1000, but the training data has only 8 batches"),
    (["strategy.budget=3000"], "below what the classifier and norm layers alone need: 3,050"),
    (["strategy.budget=1.0"], "strategy.budget as a fraction must be in (0, 1)"),
])
def test_bad_auto_input_is_one_line_and_writes_nothing(auto_run, tmp_path, overrides, message):
    _, _, path = auto_run
    out_dir = tmp_path / "never"
    r = run_cli("--recipe", str(path), f"output.dir={out_dir}", *overrides)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not out_dir.exists()


# the CLI with every batch slowed down and counted (the code under test unchanged)
COUNTING_CLI = """
import sys, time
import partial_ft.loaders as loaders
count, delay = sys.argv[1], float(sys.argv[2])
collate = loaders.collate
def counted(batch):
    with open(count, "a") as f:
        f.write("x")
    time.sleep(delay)
    return collate(batch)
loaders.collate = counted
from partial_ft.__main__ import main
sys.exit(main(sys.argv[3:]))
"""


def test_sigterm_during_the_scoring_pass_stops_within_a_batch(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import TINY, write_recipe

    raw = {**TINY, "strategy": {**AUTO, "batches": 8}, "output": {"dir": str(tmp_path / "run")}}
    path, count = write_recipe(tmp_path / "slow.yaml", raw), tmp_path / "batches"
    proc = subprocess.Popen([sys.executable, "-c", COUNTING_CLI, str(count), "1.5", "--recipe", str(path)],
                            env={**os.environ, "ACCELERATE_USE_CPU": "true"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    while line and not line.startswith("scoring pass:"):
        line = proc.stdout.readline()
    assert line.startswith("scoring pass: gradients of 8 training batches")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("error: interrupted by SIGTERM during the scoring pass")
    assert len(count.read_text()) <= 2  # the batch in progress (and at most the one being fetched), not all 8
    assert not (tmp_path / "run").exists()
