"""The real CLI on real (small) data: run folder contents and numbers, launchers, user errors."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from partial_ft import recipe as recipes

TIMING_KEYS = {"train_seconds", "feature_extract_seconds", "train_images_per_second", "peak_memory_bytes"}
RUN_FILES = {".partial_ft-run", "recipe.yaml", "plan.txt", "strategy.json", "data.json", "metrics.jsonl", "summary.json",
             "delta.safetensors", "README.md", "training_curve.png"}


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # a long end-to-end run: CI runs it; -m "not slow" leaves it out while iterating
@pytest.mark.parametrize("preload", ["auto", "true"])
def test_quickstart_reaches_its_accuracy_floor(tmp_path, preload):
    """The README's main job, as shipped: >= 0.95 top-1 on digits learning ~10% of the weights; also
    with the images preloaded and augmented in batches (on the CPU here)."""
    out = tmp_path / "quickstart"
    p = run_cli("--recipe", str(ROOT / "recipes" / "quickstart.yaml"), f"output.dir={out}", "train.progress=false",
                f"data.preload={preload}")
    assert p.returncode == 0, p.stderr[-3000:]
    s = _summary(out)
    assert s["preload"].startswith("on: " if preload == "true" else "not used: training on CPU")
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


# torchrun runs this instead of `-m partial_ft`: the real CLI, plus each rank writes hashes of its trained
# model's fixed values (the delta's fingerprint) and of its learned values, so ranks can be compared
RANK_HASHES = """
import hashlib, os, sys
from pathlib import Path
import partial_ft.train as train
from partial_ft.delta import delta_state, fingerprint, fingerprint_parts
out, loop = Path(sys.argv[1]), train.train
def recorded(*args, **kwargs):
    summary, model = loop(*args, **kwargs)
    learned = hashlib.sha256(b"".join(v.numpy().tobytes() for _, v in sorted(delta_state(model).items())))
    (out / f"rank{os.environ['RANK']}.txt").write_text(fingerprint(fingerprint_parts(model)) + " " + learned.hexdigest())
    return summary, model
train.train = recorded
from partial_ft.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("strategy", [None, {"name": "head", "norm_stats": "freeze"}, {"name": "auto", "budget": 0.05}],
                         ids=["filters", "cached_head", "auto"])
def test_torchrun_two_processes_count_every_validation_sample_once(tiny_recipe, tmp_path, strategy):
    """Data parallel on CPU (gloo): 2 ranks, a strategy that fixes part of every conv, one trained from
    cached features, and one that scores units on both ranks (summed: both select the same). The validation set (an odd size, so shards are uneven) is counted exactly once: the
    metrics equal a single-process evaluation of the same weights (on images); fixed (and learned) values
    are identical on both ranks and equal the delta's fingerprint; only rank 0 writes the run folder."""
    from partial_ft.delta import read_info
    from partial_ft.evaluation import evaluate_run

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    script, hashes = tmp_path / "rank_hashes.py", tmp_path / "hashes"
    script.write_text(RANK_HASHES)
    hashes.mkdir()
    recipe = tiny_recipe("ddp", data={"max_val_samples": 77}, **({"strategy": strategy} if strategy else {}))
    p = run_cli("--nproc_per_node", "2", str(script), str(hashes), "--recipe", str(recipe), module=(torchrun,))
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = tmp_path / "runs" / "ddp"
    assert sorted(f.name for f in run_dir.iterdir()) == sorted(RUN_FILES)  # no stray per-rank files
    s = _summary(run_dir)
    assert s["num_processes"] == 2
    assert (s["feature_cache"] is not None) == (strategy is not None and strategy["name"] == "head")
    metrics = _metrics(run_dir)
    assert len(metrics) == 1 and metrics[0]["val_samples"] == 77

    rank0, rank1 = ((hashes / f"rank{r}.txt").read_text().split() for r in (0, 1))
    assert rank0 == rank1  # fixed values never moved apart, learned values stayed in sync
    assert rank0[0] == read_info(run_dir)["fingerprint"]

    single = evaluate_run(run_dir)  # one process, the same weights, the whole validation set
    for key in ("val_samples", "val_top1", "val_top5"):
        assert single[key] == metrics[0][key], key
    assert list(single["per_class_top1"].values()) == metrics[0]["per_class_top1"]
    # the loss is summed in another order (batches gathered from two ranks), so equal up to rounding
    assert single["val_loss"] == pytest.approx(metrics[0]["val_loss"], rel=1e-6)
    if strategy and strategy["name"] == "head":  # the cached head is solved exactly: as in one process
        assert s["solver"]["solver"] == "exact"
        alone = run_cli("--recipe", str(recipe), f"output.dir={tmp_path / 'alone'}")
        assert alone.returncode == 0, alone.stderr[-2000:]
        one = _summary(tmp_path / "alone")
        assert one["solver"]["strength"] == s["solver"]["strength"] and one["val_top1"] == s["val_top1"]


def test_torchrun_a_collective_error_is_said_once(tiny_recipe, tmp_path):
    """A NaN loss stops every rank together; one `error:` line, not one per process."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    recipe = tiny_recipe("nan", strategy={"name": "full"}, train={"lr": 1e12, "opt": "sgd", "max_steps": 8,
                                                                  "batch_size": 16, "checkpoint_every": None})
    p = run_cli("--nproc_per_node", "2", "-m", "partial_ft", "--recipe", str(recipe), module=(torchrun,))
    assert p.returncode != 0
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: loss is ") and " at step " in errors[0], p.stderr[-3000:]


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


# every strategy's listing, written down: header (name, aliases) and every option with its default
SHARED = {"head": "True", "norm": "False", "norm_stats": "update"}
LISTED = {
    "auto": ("auto", {**SHARED, "norm": "True", "budget": "0.01", "unit": "filter", "score": "fisher",
                      "batches": "None", "selected": "None"}),
    "full": ("full", SHARED),
    "head": ("head", SHARED),
    "bias": ("bias", SHARED),
    "block": ("block", {**SHARED, "index": "middle", "coarse": "True", "batches": "None", "chosen": "None"}),
    "filters": ("filters", {**SHARED, "norm": "True", "fraction": "None", "count": "None", "dim": "out",
                            "select": "first", "fixed": "keep", "layers": "conv", "seed": "None"}),
    "lora": ("lora", {**SHARED, "rank": "8", "alpha": "None", "dropout": "0.0", "layers": "all", "modules": "None"}),
    "norm": ("norm (alias: bn)", SHARED),
}


def test_strategies_command_lists_every_strategy_with_options():
    """Each strategy is a header line `name[ (alias: ...)]: description` followed by its indented options,
    each `key: default  # help`, with a help text."""
    p = run_cli("strategies")
    assert p.returncode == 0
    listed: dict[str, tuple[str, dict[str, str]]] = {}
    options: dict[str, str] = {}
    for line in p.stdout.splitlines():
        if line.startswith("    "):
            option, _, rest = line.strip().partition(": ")
            default, _, help_text = rest.partition("  # ")
            assert len(help_text) > 10, line
            options[option] = default
        elif line.strip():
            header = re.match(r"(\S+(?: \([^)]*\))?): ", line).group(1)
            options = {}
            listed[header.split(" (", 1)[0]] = (header, options)
    assert listed == LISTED


@pytest.mark.slow  # a long end-to-end run: CI runs it; -m "not slow" leaves it out while iterating
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
    # resnet18 from random init keeps the norm layers of the blocks outside layer2 fixed at zero_init_last's 0
    warning = [line for line in p.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and warning[0].startswith("warning: 6 normalisation layers (layer1.0.bn2, "), p.stderr
    assert "model.kwargs.zero_init_last=false" in warning[0]


def test_no_arguments_lists_the_commands(capsys):
    from partial_ft.__main__ import main

    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "predict", "export", "push", "strategies"):
        assert re.search(rf"^    {command} +\S", out, re.MULTILINE), command
