"""tools/ scripts run end to end on tiny settings."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow  # a long end-to-end run: CI runs it; -m "not slow" leaves it out while iterating
def test_bench_runs_and_reports_optimizer_state_of_the_learned_part(tmp_path):
    out = tmp_path / "bench.md"
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), "--size", "32", "--steps", "2",
                        "--warmup", "1", "--workers", "0", "--strategies", "full,filters_out,head_cached",
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    text = out.read_text()
    rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| strategy")}
    assert set(rows) == {"full", "filters_out", "head_cached"}
    for row in rows.values():
        learned = int(row[2].split("(")[0].replace(",", ""))
        state_mib = float(row[6].split()[0])
        assert abs(state_mib - learned * 8 / 2**20) < 0.06  # AdamW: two fp32 moments per learned scalar
    # resnet18 with 10 classes: 11,181,642 parameters; its classifier 512 x 10 + 10
    assert rows["full"][2].strip() == "11,181,642 (100.0%)" and rows["head_cached"][2].strip() == "5,130 (0.0%)"
    full = float(rows["full"][3])
    for row in rows.values():  # x full is images/s over full's (both printed rounded to units)
        speed, ratio = float(row[3]), float(row[4])
        assert (speed - 0.5) / (full + 0.5) - 0.005 <= ratio <= (speed + 0.5) / (full - 0.5) + 0.005, row
    assert rows["full"][8].strip() == "–" and rows["head_cached"][8].strip().startswith("pre-logits, extracted")
    assert "Data pipeline (recipes/quickstart.yaml, 0 workers): the loader alone delivers" in text
    assert "preload: not used: training on CPU" in text and "batches on cpu" in text and float(rows["full"][9]) > 0


def _tool(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    return subprocess.run([sys.executable, str(ROOT / "tools" / name), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_log_fit_recovers_known_coefficients():
    sys.path.insert(0, str(ROOT / "tools"))
    from plot import log_fit

    import math
    params = [1e3, 5e3, 2e4, 1e5, 1e6]
    fit = log_fit(params, [0.12 + 0.055 * math.log(p) for p in params])
    assert abs(fit["a"] - 0.12) < 1e-9 and abs(fit["b"] - 0.055) < 1e-9 and fit["r2"] > 0.999999


@pytest.mark.parametrize("options,series", [
    ("auto(budget=33545, score=fisher)", "auto(budget=…, score=fisher)"),
    ("auto(budget=339120, score=fisher)", "auto(budget=…, score=fisher)"),
    ("auto(budget=33545, score=random)", "auto(budget=…, score=random)"),
    ("filters(fraction=0.001)", "filters(fraction=…)"),
    ("filters(fraction=0.029)", "filters(fraction=…)"),
    ("block(index=middle)", "block(index=middle)"),
])
def test_plot_series_join_the_sizes_of_one_setting(options, series):
    """auto's budget is a size like filters' fraction: one series per score, across its budgets."""
    sys.path.insert(0, str(ROOT / "tools"))
    from plot import series_names

    all_options = ["auto(budget=33545, score=fisher)", "auto(budget=339120, score=fisher)",
                   "auto(budget=33545, score=random)", "auto(budget=339120, score=random)",
                   "filters(fraction=0.001)", "filters(fraction=0.029)", "block(index=middle)"]
    names = series_names([{"model": "", "options": o} for o in all_options])
    assert names[("", options)] == series


def test_plot_gives_every_series_its_own_look_and_names_its_differing_options(tmp_path):
    """Series used to share colours past 10 families, `filters(count=1)` was labelled plain `filters`, and
    a fit spanned a merged family's range. Now: 20 colours before any repeats, every series' points and fit
    distinct, a one-size setting keeps its full label, each fit holds over its own points' x range only."""
    sys.path.insert(0, str(ROOT / "tools"))
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex
    from plot import figure, read_rows, styles

    results = tmp_path / "results.csv"
    rows = ["strategy,options,learned_params,val_top1_mean,val_top1_std"]
    for i in range(23):  # 23 settings of two sizes each: the fraction is not part of a series
        rows += [f"s{i},s{i}(fraction=0.1),{1000 + i},{0.5 + i / 100},0.01",
                 f"s{i},s{i}(fraction=0.5),{9000 + i},{0.6 + i / 100},0.02",
                 f"s{i},s{i}(fraction=0.9),{20000 + i},{0.65 + i / 100},0.02"]  # three sizes: a fit needs 3
    rows += ["filters,filters(count=1),300,0.4,0.0", "filters,filters(fraction=0.1),5000,0.6,0.0",
             "filters,filters(fraction=0.3),10000,0.65,0.0", "filters,filters(fraction=0.5),20000,0.7,0.0",
             "two,two(fraction=0.1),100,0.1,0.0", "two,two(fraction=0.2),200,0.2,0.0"]  # two sizes: no fit
    results.write_text("\n".join(rows) + "\n")
    fig, fits = figure(read_rows(results))
    ax = fig.axes[0]
    points = {c.get_label(): c.lines[0] for c in ax.containers}  # errorbar: (data line, caps, bars)
    fit_lines = {line.get_label().split(": ")[0]: line for line in ax.get_lines() if ": " in line.get_label()}
    assert "filters(count=1)" in points and "filters(fraction=…)" in points and "filters" not in points
    assert len(points) == 26
    assert set(fit_lines) == set(fits["all"]) == set(points) - {"filters(count=1)", "two(fraction=…)"}
    assert len({(to_hex(line.get_color()), line.get_marker()) for line in points.values()}) == 26
    assert len({to_hex(line.get_color()) for line in list(points.values())}) == 20
    assert fits["all"]["filters(fraction=…)"]["x_min"] == 5000 and fits["all"]["filters(fraction=…)"]["x_max"] == 20000
    xs = fit_lines["filters(fraction=…)"].get_xdata()
    assert min(xs) == pytest.approx(5000) and max(xs) == pytest.approx(20000)
    assert all("r² " in line.get_label() for line in fit_lines.values())
    plt.close(fig)
    many = styles([f"f{i}" for i in range(80)])
    assert len({s["color"] for s in list(many.values())[:20]}) == 20
    assert len({(s["color"], s["marker"]) for s in many.values()}) == 80
    assert len({(s["color"], str(s["linestyle"])) for s in many.values()}) == 80


def test_pareto_front_keeps_only_unbeaten_points():
    sys.path.insert(0, str(ROOT / "tools"))
    from plot import pareto

    points = [(10, 0.5), (20, 0.4), (30, 0.7), (30, 0.6), (40, 0.7), (50, 0.9)]
    assert pareto(points) == [(10, 0.5), (30, 0.7), (50, 0.9)]


def test_budget_matching_lands_within_ten_percent(tiny_recipe):
    sys.path.insert(0, str(ROOT / "tools"))
    from partial_ft.sweep.budget import match

    from partial_ft.models import build
    from partial_ft.recipe import load

    recipe = load(tiny_recipe("budget"))
    model, init_model = build(recipe.model, 10, seed=0)
    total = sum(p.numel() for p in model.parameters())
    for spec in ({"name": "filters", "dim": "out"}, {"name": "filters", "dim": "in", "fixed": "zero"}):
        matched, learned = match(model, init_model, spec, 0.3)
        assert abs(learned / (0.3 * total) - 1) <= 0.10, (matched, learned)
        assert 0 < matched["fraction"] <= 1


def test_every_shipped_sweep_grid_is_valid():
    """Each grid in recipes/sweeps/ passes the sweep's validation (keys, strategies, overrides, tune keys)."""
    from partial_ft.sweep import grid

    paths = sorted((ROOT / "recipes" / "sweeps").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"suite_offline", "suite_hub", "suite_vtab1k"}
    for path in paths:
        assert grid.load(path).strategies, path


def test_tiny_sweep_end_to_end_writes_tables_and_plot(tiny_recipe, tmp_path):
    import csv

    import yaml
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"seeds": [0, 1], "overrides": ["train.max_steps=2"], "strategies": [
        {"name": "head"}, {"name": "filters", "grid": {"fraction": [0.1, 0.5]}}]}))
    out = tmp_path / "sweep"
    p = _tool("sweep.py", "--recipe", str(tiny_recipe("base")), "--grid", str(grid), "--out", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 3 and all(r["seeds"] == "2" for r in rows)
    assert {r["strategy"] for r in rows} == {"head", "filters"}
    assert "± " in (out / "results.md").read_text()
    # interrupted sweeps continue: finished runs are skipped
    finished = sorted(out.glob("*/summary.json"))
    stamps = [f.stat().st_mtime_ns for f in finished]
    assert _tool("sweep.py", "--recipe", str(tiny_recipe("base")), "--grid", str(grid), "--out", str(out)).returncode == 0
    assert [f.stat().st_mtime_ns for f in finished] == stamps

    p = _tool("plot.py", str(out / "results.csv"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert (out / "accuracy_vs_learned_params.png").stat().st_size > 1000
    assert (out / "accuracy_vs_learned_params.svg").is_file()
    assert p.stdout.splitlines()[-1] == (f"wrote {out / 'accuracy_vs_learned_params.png'}, "
                                         f"{out / 'accuracy_vs_learned_params.svg'}, {out / 'fits.json'}")
    assert list(json.loads((out / "fits.json").read_text()).values()) == [{}]  # two sizes: too few to fit


SWEEP_GRID = {"seeds": [0], "overrides": ["train.max_steps=2"], "strategies": [{"name": "head"}, {"name": "bias"}]}
RUN_FILES = ("summary.json", "delta.safetensors", "metrics.jsonl", "recipe.yaml")
TIMING = {"train_seconds", "feature_extract_seconds", "train_images_per_second", "peak_memory_bytes", "delta_bytes"}


def _sweep_and_rerun(launcher: str, base, tmp_path):
    """Run the 2-strategy x 1-seed grid with `launcher`, check its tables against the runs' summaries,
    rerun it and check that nothing retrained; returns the sweep folder."""
    import csv
    import json

    import yaml
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(SWEEP_GRID))
    out = tmp_path / f"sweep_{launcher}"
    args = ("--recipe", str(base), "--grid", str(grid), "--out", str(out), "--launcher", launcher)
    p = _tool("sweep.py", *args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "skipped" not in p.stdout

    summaries = {name: json.loads((out / f"{name}_seed0" / "summary.json").read_text()) for name in ("head", "bias")}
    for name, summary in summaries.items():
        assert summary["strategy_spec"]["name"] == name and summary["seed"] == 0 and summary["num_processes"] == 1
    rows = {r["options"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {"head", "bias"}
    for name, row in rows.items():
        summary = summaries[name]
        assert row["strategy"] == name and row["seeds"] == "1" and float(row["val_top1_std"]) == 0.0
        assert int(row["learned_params"]) == summary["learned_params"]
        assert float(row["val_top1_mean"]) == summary["val_top1"]
        assert float(row["learned_pct"]) == 100 * summary["learned_fraction"]
    assert summaries["bias"]["learned_params"] > summaries["head"]["learned_params"]  # biases + the head
    md = [line.split("|")[1:-1] for line in (out / "results.md").read_text().splitlines()[2:]]
    assert {cells[0].strip(): cells[1].strip() for cells in md} == \
        {name: f"{s['learned_params']:,}" for name, s in summaries.items()}
    assert all(cells[3].strip() == f"{summaries[cells[0].strip()]['val_top1']:.4f} ± –" for cells in md)  # one seed: no spread

    # rerun: both runs are finished, so neither trains again (a retrain would rewrite their files)
    files = [out / f"{name}_seed0" / f for name in summaries for f in RUN_FILES]
    stamps = [f.stat().st_mtime_ns for f in files]
    table = (out / "results.csv").read_text()
    p = _tool("sweep.py", *args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("(finished before: skipped)") == 2
    assert "learning" not in p.stdout  # a training run prints 'strategy ...: learning N of M parameters'
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert (out / "results.csv").read_text() == table
    return out, summaries


def test_sweep_inprocess_launcher_tables_skip_and_no_state_leak(tiny_recipe, tmp_path):
    """All runs in the sweep's own process: its second run must equal the same run trained alone, in
    another process (nothing leaks from the first run: RNG, Accelerate state, injected modules)."""
    from partial_ft import recipe as recipes
    from partial_ft import train

    out, summaries = _sweep_and_rerun("inprocess", tiny_recipe("base"), tmp_path)
    reference = train.run(recipes.load(out / "bias_seed0.yaml", [f"output.dir={tmp_path / 'alone'}"]))
    assert {k: v for k, v in summaries["bias"].items() if k not in TIMING} == \
        {k: v for k, v in reference.items() if k not in TIMING}


def test_sweep_accelerate_launcher_tables_and_skip(tiny_recipe, tmp_path):
    """Each run as `accelerate launch -m partial_ft` (CPU: ACCELERATE_USE_CPU=true, set by _tool)."""
    _sweep_and_rerun("accelerate", tiny_recipe("base"), tmp_path)


def test_two_member_ensemble_and_weight_stats_on_trained_runs(tiny_recipe, tmp_path):
    import json

    out = tmp_path / "ens"
    recipe = tiny_recipe("ens_base", strategy={"name": "filters", "fraction": 0.25, "fixed": "random"})
    p = _tool("ensemble.py", "--recipe", str(recipe), "--members", "2", "--out", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads((out / "ensemble.json").read_text())["shared_backbone"]
    assert result["members"] == 2 and len(result["member_top1"]) == 2
    assert 0 <= result["ensemble_top1"] <= 1
    summaries = [json.loads((out / f"member{i}" / "summary.json").read_text()) for i in range(2)]
    assert result["learned_params_total"] == sum(s["learned_params"] for s in summaries)
    assert result["mean_member_top1"] == sum(s["val_top1"] for s in summaries) / 2  # same split, same weights

    p = _tool("weight_stats.py", str(out / "member0"))
    assert p.returncode == 0, p.stderr[-2000:]
    rows = (out / "member0" / "weight_stats.csv").read_text().splitlines()
    assert rows[0].startswith("layer,kind,entries,learned") and len(rows) > 5
    assert (out / "member0" / "weight_stats.png").stat().st_size > 1000


@pytest.mark.slow  # a long end-to-end run: CI runs it; -m "not slow" leaves it out while iterating
def test_make_transfer_writes_a_loadable_backbone_and_the_target_imagefolder(tmp_path):
    """The offline transfer task: a source checkpoint without a classifier that loads as model.checkpoint,
    and digits 5-9 as train/validation folders (labels '5'..'9')."""
    import json

    from partial_ft import recipe as recipes
    from partial_ft.data import load
    from partial_ft.models import build

    out = tmp_path / "transfer"
    p = _tool("make_transfer.py", "--out", str(out), "--model", "test_resnet", "--epochs", "1")
    assert p.returncode == 0, p.stderr[-2000:]
    record = json.loads((out / "source.json").read_text())
    assert "source test_resnet on digits 0-4: 100%" in p.stderr  # a progress bar, not silence until the end
    assert p.stdout.startswith("wrote the target task, digits 5-9")
    assert record["classes"] == [0, 1, 2, 3, 4] and record["target"]["classes"] == [5, 6, 7, 8, 9]
    assert sorted(d.name for d in (out / "digits59" / "train").iterdir()) == ["5", "6", "7", "8", "9"]
    recipe = recipes.load(ROOT / "recipes" / "transfer_digits.yaml", [
        f"data.dataset={out / 'digits59'}", f"model.checkpoint={out / 'source.safetensors'}",
        "model.name=test_resnet"])
    bundle = load(recipe.data)
    assert bundle.class_names == ["5", "6", "7", "8", "9"] and bundle.info["val_split"] == "validation"
    assert len(bundle.train) == record["target"]["train_images"]
    model, _ = build(recipe.model, bundle.num_classes)  # the backbone loads; the classifier is new
    assert model.get_classifier().out_features == 5


def _suite_row(dataset: str, mean: float, std: float, seeds: int, lr) -> dict:
    return {"model": "m", "dataset": dataset, "strategy": "head", "options": "head", "control_for": "",
            "learned_params": 5130, "val_top1_mean": mean, "val_top1_std": std, "seeds": seeds, "train.lr": lr}


@pytest.mark.parametrize("rows,tuned,expected", [
    ([_suite_row("a", 0.9, 0.01, 3, 0.003), _suite_row("b", 0.8, 0.02, 3, 0.01)], ["train.lr"],
     "| head | 5,130 | 0.9000 ± 0.0100 (lr 0.003) | 0.8000 ± 0.0200 (lr 0.01) | 0.8500 |"),
    ([_suite_row("a", 0.9, 0.0, 1, ""), _suite_row("b", 0.7, 0.0, 1, "")], [],
     "| head | 5,130 | 0.9000 | 0.7000 | 0.8000 |"),
    ([_suite_row("a", 0.9, 0.0, 1, "")], [], None),  # one dataset: the single-dataset table instead
])
def test_suite_table_cells_say_spread_and_chosen_values(rows, tuned, expected):
    """A suite's cell is mean top-1, ± std when several seeds, and the tuned values chosen on that dataset."""
    from partial_ft.sweep import results

    if expected is None:
        rows[0].update(learned_pct=0.05, tune_top1="", delta_bytes=0, train_seconds=1.0, peak_memory_mib=1.0,
                       images_per_second=1.0)
    lines = results.markdown(rows, tuned).splitlines()
    if expected is None:
        assert lines[0].startswith("| strategy | learned params | % of total |")
        assert "| 0.9000 ± – | 1 |" in lines[2]  # one seed: no spread measured, not ± 0.0000
    else:
        assert lines[0] == "| strategy | learned params | a | b | mean |" and lines[2] == expected


def test_weight_stats_series_are_one_per_kind_of_layer():
    """resnet18: the 7x7 stem, sixteen 3x3 convs, three 1x1 downsample convs, the classifier; the 1x1 convs
    sit between 3x3 ones and are their own series, not a dip in the 3x3 trend."""
    import timm

    sys.path.insert(0, str(ROOT / "tools"))
    import weight_stats

    from partial_ft import apply_strategy

    model = timm.create_model("resnet18", num_classes=10)
    apply_strategy(model, {"name": "filters", "fraction": 0.25})
    rows = weight_stats.layer_stats(model)
    kinds = weight_stats.series(rows)
    assert {k: len(v) for k, v in kinds.items()} == {"conv 7x7": 1, "conv 3x3": 16, "conv 1x1": 3, "linear": 1}
    assert [rows[i]["layer"] for i in kinds["conv 1x1"]] == [f"layer{n}.0.downsample.0" for n in (2, 3, 4)]
    assert all(rows[i]["learned"] == rows[i]["entries"] // 4 for i in kinds["conv 3x3"])  # 25% of the filters


def _result(options: str, lr: str, trials: int, pruned: int, steps: int, seconds: float, mean: float) -> dict:
    return {"dataset": "transfer", "model": "resnet18", "options": options, "train.lr": lr, "tune_trials": str(trials),
            "tune_pruned": str(pruned), "tune_steps": str(steps), "tune_seconds": str(seconds),
            "val_top1_mean": str(mean), "val_top1_std": "0.01", "train_seconds": "9.5"}


def test_pruning_table_totals_ratio_and_largest_difference():
    """tools/pruning.py's table from hand-made results rows: the choices side by side, the steps and
    seconds summed over configurations, their ratio, and the largest final top-1 difference."""
    sys.path.insert(0, str(ROOT / "tools"))
    import pruning

    halving = [_result("full", "0.003", 5, 3, 120, 30.0, 0.99), _result("block", "0.03", 5, 2, 180, 50.0, 0.97)]
    none = [_result("full", "0.003", 5, 0, 300, 80.0, 0.99), _result("block", "0.01", 5, 0, 300, 120.0, 0.985)]
    lines = pruning.compare(halving, none, "halving")
    assert lines[2] == ("| transfer | full | 0.003 / 0.003 | 5 (3) / 5 (0) | 120 / 300 | 30 / 80 | 0.9900 ± 0.0100 | "
                        "0.9900 ± 0.0100 | +0.0000 |")
    assert "| 0.03 / 0.01 |" in lines[3] and lines[3].endswith("| -0.0150 |")
    assert lines[-1] == ("Tuning, all configurations: 300 steps and 80 s with halving, 600 steps and 200 s with none: "
                         "50% of the steps, 40% of the seconds. Largest final top-1 difference: 0.0150.")
    assert pruning.same_tables(none, [{**r, "train_seconds": "11.0", "tune_seconds": "1"} for r in none])
    assert not pruning.same_tables(none, [{**none[0], "val_top1_mean": "0.98"}, none[1]])
