"""The sweep (partial_ft.sweep): grid validation, tuning on a carve-out of train, suites over datasets,
controls, --jobs."""
from __future__ import annotations

import csv
import json
import sys

import pytest
import yaml

from conftest import ROOT
from partial_ft.errors import UserError
from partial_ft.sweep import Options, run_sweep
from partial_ft.sweep import grid as grids

sys.path.insert(0, str(ROOT / "tools"))
import plot  # noqa: E402  (a script of tools/, not a module of the package)


class _Sweep:
    """The old `sweep.sweep(args)` shape: run the sweep, return how many runs failed."""

    @staticmethod
    def sweep(a) -> int:
        return len(run_sweep(a["recipe"], a["grid"], a["out"], a["overrides"],
                             options=Options(launcher=a["launcher"], jobs=a["jobs"])).failures)


sweep = _Sweep()


def _args(recipe, grid_path, out, launcher="inprocess", jobs=1, overrides=()):
    return {"recipe": str(recipe), "grid": str(grid_path), "out": str(out), "launcher": launcher, "jobs": jobs,
            "overrides": list(overrides)}


def _grid(tmp_path, name, **grid):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


STRATEGIES = [{"name": "head"}]
GRID_ERRORS = [  # (grid, what the one-line error must say)
    ({"strategies": STRATEGIES, "budget": float("inf")}, "'budget' must be a positive finite number, got inf"),
    ({"strategies": STRATEGIES, "budget": float("nan")}, "'budget' must be a positive finite number, got nan"),
    ({"strategies": STRATEGIES, "budget": True}, "'budget' must be a positive finite number, got True"),
    ({"strategies": STRATEGIES, "tune_fraction": float("nan")}, "'tune_fraction' must be a number in (0, 1), got nan"),
    ({"strategies": STRATEGIES, "tunes": {"train.lr": [0.1]}}, "unknown grid key 'tunes' (did you mean 'tune'?)"),
    ({"strategies": STRATEGIES, "dataset": [{"name": "a"}]}, "unknown grid key 'dataset' (did you mean 'datasets'?)"),
    ({"strategies": STRATEGIES, "tune": {"train.lrr": [0.1]}}, "tune 'train.lrr': unknown recipe key (did you mean"),
    ({"strategies": STRATEGIES, "tune": {"train.lr": 0.1}}, "tune: 'train.lr' must list its candidate values"),
    ({"strategies": STRATEGIES, "tune": {"strategy.fraction": [0.1]}}, "strategies are set by 'strategies'"),
    ({"strategies": STRATEGIES, "overrides": ["train.epoch=2"]}, "override 'train.epoch': unknown recipe key"),
    ({"strategies": STRATEGIES, "datasets": [{"name": "a", "override": []}]},
     "datasets: unknown key 'override' (did you mean 'overrides'?)"),
    ({"strategies": STRATEGIES, "models": [{"name": "a"}, {"name": "a"}]}, "'models' names must differ"),
    ({"strategies": STRATEGIES, "tune_fraction": 1.5}, "'tune_fraction' must be a number in (0, 1)"),
    ({"strategies": [{"name": "filter"}]}, "filter"),
    ({"strategies": STRATEGIES, "controls": {"name": "filters", "selct": "random"}}, "selct"),
    # a value only the recipe schema can judge: the configuration that holds it is named, before any run
    ({"strategies": STRATEGIES, "datasets": [{"name": "ok", "overrides": []},
                                             {"name": "bad", "overrides": ["train.epochs=0"]}]},
     "head dataset bad seed 0: train.epochs must be >= 1"),
    ({"strategies": STRATEGIES, "tune": {"train.opt": ["adamw"], "train.lr": [0.1, -1]}},
     "tune head {'train.opt': 'adamw', 'train.lr': -1}: train.lr must be > 0"),
    # a strategy entry's own overrides: checked as the grid's, the configuration named with them
    ({"strategies": [{"name": "head", "overrides": ["train.epoch=2"]}]}, "override 'train.epoch': unknown recipe key"),
    ({"strategies": [{"name": "head", "overrides": "train.epochs=2"}]},
     "'strategies: head: overrides' must be a list of strs"),
    ({"strategies": [{"name": "head"}, {"name": "head", "overrides": ["train.epochs=0"]}]},
     "head [train.epochs=0] seed 0: train.epochs must be >= 1"),
]


@pytest.mark.parametrize("grid,message", GRID_ERRORS)
def test_grid_mistakes_are_user_errors_before_any_run(tiny_recipe, tmp_path, grid, message):
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        sweep.sweep(_args(tiny_recipe("base"), _grid(tmp_path, "g", **grid), out))
    assert message in str(e.value)
    assert not out.exists()  # nothing ran, nothing written


@pytest.fixture
def flipped(tmp_path):
    """Digits 0 and 1 (an easy task), saved with a validation split whose labels are all swapped: a model
    that learned the task scores ~0 there and ~1 on any part of train. So whatever chooses on the
    validation split picks the candidate that learned nothing; a choice on the carve-out picks the other."""
    from datasets import ClassLabel, DatasetDict

    from partial_ft.data_sources import digits

    two = DatasetDict({k: v.filter(lambda row: row["label"] < 2) for k, v in digits().items()})
    two = two.cast_column("label", ClassLabel(names=["0", "1"]))
    two["validation"] = two["validation"].map(lambda row: {"label": 1 - row["label"]})
    path = tmp_path / "flipped"
    two.save_to_disk(str(path))
    return path


def test_tuning_chooses_on_the_carve_out_and_reruns_skip_tune_runs(tiny_recipe, tmp_path, flipped):
    base = tiny_recipe("base", data={"dataset": str(flipped), "max_train_samples": None, "max_val_samples": None},
                       train={"epochs": 4, "max_steps": 28, "batch_size": 16, "progress": False})
    grid_path = _grid(tmp_path, "tune", seeds=[0, 1], strategies=[{"name": "full"}],
                      tune={"train.lr": [1e-9, 0.003]}, tune_fraction=0.25)
    out = tmp_path / "out"
    assert sweep.sweep(_args(base, grid_path, out)) == 0

    tune_runs = sorted((out / "tune").glob("*/summary.json"))
    assert [p.parent.name for p in tune_runs] == ["full_lr-0.003_seed0", "full_lr-1e-09_seed0"]
    top1 = {p.parent.name: json.loads(p.read_text())["val_top1"] for p in tune_runs}
    assert top1["full_lr-0.003_seed0"] > 0.9 > top1["full_lr-1e-09_seed0"]  # the carve-out: learned vs not
    for p in tune_runs:  # trained on train minus the carve-out, validated on the carve-out
        info = json.loads((p.parent / "data.json").read_text())
        split = info["val_split"]
        assert split["carved_from"] == "train" and split["purpose"] == "tune" and split["fraction"] == 0.25
        assert info["val_samples"] == len(split["indices"]) and 0.2 < info["val_samples"] / (
            info["val_samples"] + info["train_samples"]) < 0.3
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 1 and float(rows[0]["train.lr"]) == 0.003
    assert float(rows[0]["tune_top1"]) == top1["full_lr-0.003_seed0"]
    finals = sorted(out.glob("full_*_seed*/summary.json"))
    assert [p.parent.name for p in finals] == ["full_lr-0.003_seed0", "full_lr-0.003_seed1"]
    final_top1 = [json.loads(p.read_text())["val_top1"] for p in finals]
    assert float(rows[0]["val_top1_mean"]) == pytest.approx(sum(final_top1) / 2)
    assert max(final_top1) < 0.2  # the final runs do report the (swapped) validation split

    # a rerun trains nothing: tune runs and final runs are all skipped
    stamps = {p: p.stat().st_mtime_ns for p in [*tune_runs, *finals]}
    assert sweep.sweep(_args(base, grid_path, out)) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_two_dataset_suite_columns_mean_controls_and_panels(tiny_recipe, tmp_path):
    """Two datasets x (head, a filters setting) with random controls: one row per (dataset, setting), a
    control row matched in learned parameters, a mean column in results.md, a panel per dataset + mean."""
    grid_path = _grid(tmp_path, "suite", seeds=[0], overrides=["train.max_steps=1"],
                      datasets=[{"name": "small", "overrides": ["data.max_train_samples=64"]},
                                {"name": "large", "overrides": ["data.max_train_samples=96"]}],
                      controls={"name": "filters", "select": "random", "layers": "all"},
                      strategies=[{"name": "head"}, {"name": "filters", "fraction": 0.5}])
    out = tmp_path / "out"
    assert sweep.sweep(_args(tiny_recipe("base"), grid_path, out)) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert list(rows[0])[:7] == ["dataset", "model", "strategy", "options", "control_for", "learned_params",
                                 "learned_pct"]
    assert {"delta_bytes", "train_seconds", "peak_memory_mib", "tune_top1"} <= set(rows[0])
    assert [(r["dataset"], r["options"], r["control_for"]) for r in rows] == [
        ("large", "filters(fraction=0.5)", ""),
        ("large", rows[1]["options"], "filters(fraction=0.5)"),
        ("large", "head", ""),
        ("small", "filters(fraction=0.5)", ""),
        ("small", rows[4]["options"], "filters(fraction=0.5)"),
        ("small", "head", "")]
    for control, target in ((rows[1], rows[0]), (rows[4], rows[3])):
        assert "select=random" in control["options"] and control["strategy"] == "filters"
        assert abs(int(control["learned_params"]) / int(target["learned_params"]) - 1) <= 0.1
    assert all(r["model"] == "test_resnet" and int(r["delta_bytes"]) > 0 for r in rows)
    for r in rows:  # each row is its run's summary
        folder = out / r["dataset"]
        summary = json.loads(next(folder.glob(f"{grids.slug(r['options'])}_seed0/summary.json")).read_text())
        assert float(r["val_top1_mean"]) == summary["val_top1"] and int(r["learned_params"]) == summary["learned_params"]
    md = (out / "results.md").read_text().splitlines()
    assert md[0] == "| strategy | learned params | large | small | mean |"
    head = next(line for line in md if line.startswith("| head "))
    cells = [c.strip() for c in head.split("|")[1:-1]]
    by = {r["dataset"]: float(r["val_top1_mean"]) for r in rows if r["options"] == "head"}
    assert cells[2:] == [f"{by['large']:.4f}", f"{by['small']:.4f}", f"{(by['large'] + by['small']) / 2:.4f}"]
    assert any(line.startswith("| ↳ random, same count: filters(") for line in md)

    fig, fits = plot.figure(plot.read_rows(out / "results.csv"))
    assert [ax.get_title() for ax in fig.axes] == ["large", "small", "mean"]
    assert set(fits["mean"]) == set()  # one size per series: no fit


TIMING = {"train_seconds", "peak_memory_mib", "images_per_second"}


def test_jobs_two_gives_the_same_results_as_one(tiny_recipe, tmp_path):
    """--jobs 2 (two processes at once on CPU) and --jobs 1: the same runs, the same table (timings aside)."""
    grid_path = _grid(tmp_path, "jobs", seeds=[0], overrides=["train.max_steps=2"],
                      strategies=[{"name": "head"}, {"name": "bias"}])
    tables = []
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        assert sweep.sweep(_args(tiny_recipe("base"), grid_path, out, launcher="python", jobs=jobs)) == 0
        tables.append([{k: v for k, v in r.items() if k not in TIMING}
                       for r in csv.DictReader((out / "results.csv").open())])
    assert len(tables[0]) == 2 and tables[0] == tables[1]
