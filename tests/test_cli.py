"""The real CLI on real (small) data: run folder contents and numbers, launchers, user errors."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from partial_ft import list_strategies
from partial_ft import recipe as recipes

TIMING_KEYS = {"train_seconds", "train_images_per_second", "peak_memory_bytes"}


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_quickstart_reaches_its_accuracy_floor(tmp_path):
    """The README's main job, as shipped: >= 0.95 top-1 on digits learning ~10% of the weights."""
    out = tmp_path / "quickstart"
    p = run_cli("--recipe", str(ROOT / "recipes" / "quickstart.yaml"), f"output.dir={out}", "train.progress=false")
    assert p.returncode == 0, p.stderr[-3000:]
    s = _summary(out)
    assert s["val_top1"] >= 0.95
    assert 0.05 < s["learned_fraction"] < 0.15
    assert p.stdout.strip().splitlines()[-1].startswith(f"run folder {out}")


def test_run_folder_files_and_numbers_are_deterministic(tiny_recipe, tmp_path):
    train = {"epochs": 2, "max_steps": None, "batch_size": 32}
    first = tiny_recipe("a", train={**train}, data={"max_train_samples": 96, "max_val_samples": 50})
    p = run_cli("--recipe", str(first))
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = tmp_path / "runs" / "a"
    assert {"recipe.yaml", "metrics.jsonl", "summary.json", "plan.txt", "data.json"} <= {f.name for f in run_dir.iterdir()}

    # the resolved recipe is complete and loads back as the same recipe
    resolved = recipes.load(run_dir / "recipe.yaml")
    assert resolved.train.epochs == 2 and resolved.strategy["fixed"] == "random"
    assert resolved.data.num_workers == 0 and resolved.model.name == "test_resnet"

    metrics = _metrics(run_dir)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(m["val_samples"] == 50 for m in metrics)
    assert metrics[-1]["step"] == 2 * 3  # ceil(96 / 32) steps per epoch

    s = _summary(run_dir)
    for key in ("model", "strategy", "learned_params", "total_params", "val_top1", "val_top5", "train_seconds",
                "train_images_per_second", "optimizer_state_bytes"):
        assert key in s, key
    assert s["model"] == "test_resnet" and s["strategy"].startswith("filters")
    assert 0 <= s["val_top1"] <= s["val_top5"] <= 1
    assert s["val_top1"] == metrics[-1]["val_top1"]
    assert 0 < s["learned_params"] < s["total_params"]
    assert s["optimizer_state_bytes"] == s["learned_params"] * 2 * 4  # AdamW: two fp32 moments
    assert s["train_images_per_second"] > 0
    last = p.stdout.strip().splitlines()[-1]
    assert str(run_dir) in last and "val_top1" in last and f"{s['learned_params']:,}" in last

    # same seed, same numbers (CPU)
    second = tiny_recipe("b", train={**train}, data={"max_train_samples": 96, "max_val_samples": 50})
    assert run_cli("--recipe", str(second)).returncode == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]  # noqa: E731
    assert strip(_metrics(tmp_path / "runs" / "b")) == strip(metrics)


def test_accelerate_launch_with_bf16_accumulation_and_clipping(tiny_recipe, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    recipe = tiny_recipe("launched", train={"mixed_precision": "bf16", "grad_accum_steps": 2, "clip_grad": 1.0,
                                            "opt": "sgd", "momentum": 0.9})
    p = run_cli("launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
                "--dynamo_backend", "no", "-m", "partial_ft", "--recipe", str(recipe), module=(accelerate,))
    assert p.returncode == 0, p.stderr[-3000:]
    s = _summary(tmp_path / "runs" / "launched")
    assert s["steps"] == 4  # optimizer updates, each accumulating 2 batches
    assert s["optimizer_state_bytes"] == s["learned_params"] * 4  # SGD momentum: one fp32 buffer


def test_torchrun_two_processes_count_every_validation_sample_once(tiny_recipe, tmp_path):
    """Data parallel on CPU (gloo): 2 ranks, a strategy that fixes part of every conv; the validation
    set (an odd size, so shards are uneven) is counted exactly once; only rank 0 writes."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    recipe = tiny_recipe("ddp", data={"max_val_samples": 77})
    p = run_cli("--nproc_per_node", "2", "-m", "partial_ft", "--recipe", str(recipe), module=(torchrun,))
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = tmp_path / "runs" / "ddp"
    s = _summary(run_dir)
    assert s["num_processes"] == 2
    metrics = _metrics(run_dir)
    assert len(metrics) == 1 and metrics[0]["val_samples"] == 77


@pytest.mark.parametrize("args, message", [
    (["train.epochz=3"], "unknown key 'train.epochz' (did you mean 'epochs'?)"),
    (["train.epochs=ten"], "train.epochs: expected an integer, got 'ten'"),
    (["strategy.name=filterz"], "unknown strategy 'filterz'"),
    (["strategy.index=3"], "unknown option 'strategy.index' for strategy 'filters'"),
    (["model.name=resnet181"], "unknown timm model 'resnet181'"),
    (["train.lr"], "must look like section.key=value"),
])
def test_user_mistakes_exit_2_with_one_line(tiny_recipe, tmp_path, args, message):
    recipe = tiny_recipe("mistake")
    p = run_cli("--recipe", str(recipe), *args)
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and message in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "runs" / "mistake").exists()


def test_missing_recipe_and_refusal_to_clobber(tiny_recipe, tmp_path):
    p = run_cli("--recipe", str(tmp_path / "nope.yaml"))
    assert p.returncode == 2 and p.stderr.startswith("error: recipe file not found")

    recipe = tiny_recipe("twice", train={"max_steps": 1})
    assert run_cli("--recipe", str(recipe)).returncode == 0
    summary = (tmp_path / "runs" / "twice" / "summary.json").read_text()
    p = run_cli("--recipe", str(recipe))
    assert p.returncode == 2 and "already holds a run" in p.stderr
    assert (tmp_path / "runs" / "twice" / "summary.json").read_text() == summary  # untouched
    assert run_cli("--recipe", str(recipe), "--overwrite").returncode == 0


def test_strategies_command_lists_every_strategy_with_options():
    p = run_cli("strategies")
    assert p.returncode == 0
    for s in list_strategies():
        assert f"{s.name}" in p.stdout
        for option in s.option_defaults():
            assert f"{option}:" in p.stdout


def test_middle_block_recipe_runs_offline_when_overridden(tmp_path):
    """The design card's recipe (pretrained backbone, Hub data) runs offline on digits from random init."""
    out = tmp_path / "middle"
    p = run_cli("--recipe", str(ROOT / "recipes" / "middle_block.yaml"), "data.dataset=digits",
                "model.pretrained=false", f"output.dir={out}", "train.max_steps=2", "train.batch_size=8",
                "data.num_workers=0", "data.max_val_samples=16", "train.progress=false")
    assert p.returncode == 0, p.stderr[-3000:]
    s = _summary(out)
    assert s["strategy"] == "block" and s["steps"] == 2 and s["data_config"]["input_size"] == [3, 224, 224]
    assert s["learned_params"] < 0.2 * s["total_params"]
