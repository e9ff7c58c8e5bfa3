"""tools/ scripts run end to end on tiny settings."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


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
    assert "Data pipeline (recipes/quickstart.yaml, 2 workers): the loader alone delivers" in text


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


def test_plot_gives_every_family_its_own_look_past_ten_families(tmp_path):
    """matplotlib's colour cycle has 10 colours: an 11th family used to share the first one's colour,
    marker and fit line. Every family's points (colour, marker) and fit (colour, line style) differ."""
    sys.path.insert(0, str(ROOT / "tools"))
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex
    from plot import figure, read_results, styles

    results = tmp_path / "results.csv"
    rows = ["strategy,options,learned_params,val_top1_mean,val_top1_std"]
    for i in range(23):  # 23 families of two sizes each: the fraction is not part of a family
        rows += [f"s{i},s{i}(fraction=0.1),{1000 + i},{0.5 + i / 100},0.01",
                 f"s{i},s{i}(fraction=0.5),{9000 + i},{0.6 + i / 100},0.02"]
    results.write_text("\n".join(rows) + "\n")
    families = read_results(results)
    assert len(families) == 23 and all(len(points) == 2 for points in families.values())

    fig, fits = figure(families)
    ax = fig.axes[0]
    points = {c.get_label(): c.lines[0] for c in ax.containers}  # errorbar: (data line, caps, bars)
    fit_lines = {line.get_label().split(": ")[0]: line for line in ax.get_lines() if ": " in line.get_label()}
    assert set(points) == set(fit_lines) == set(fits) == set(families)
    point_looks = {(to_hex(line.get_color()), line.get_marker()) for line in points.values()}
    assert len(point_looks) == 23
    look = styles(sorted(families))
    for family, line in fit_lines.items():
        assert to_hex(line.get_color()) == to_hex(points[family].get_color()) == look[family]["color"]
        assert points[family].get_marker() == look[family]["marker"]
        assert line.get_linestyle() == look[family]["linestyle"]  # 23 families: named styles only
    fit_looks = {(s["color"], str(s["linestyle"])) for s in look.values()}
    assert len(fit_looks) == 23
    plt.close(fig)

    # the first ten keep the old look (tab10 circles, solid fits); distinct well past that
    many = styles([f"f{i}" for i in range(80)])
    assert [s["color"] for s in list(many.values())[:10]] == \
        [to_hex(c) for c in plt.rcParams["axes.prop_cycle"].by_key()["color"]]
    assert all(s["marker"] == "o" and s["linestyle"] == "-" for s in list(many.values())[:10])
    assert len({(s["color"], s["marker"]) for s in many.values()}) == 80
    assert len({(s["color"], str(s["linestyle"])) for s in many.values()}) == 80


def test_budget_matching_lands_within_ten_percent(tiny_recipe):
    sys.path.insert(0, str(ROOT / "tools"))
    from budget import match

    from partial_ft.models import build
    from partial_ft.recipe import load

    recipe = load(tiny_recipe("budget"))
    model, init_model = build(recipe.model, 10, seed=0)
    total = sum(p.numel() for p in model.parameters())
    for spec in ({"name": "filters", "dim": "out"}, {"name": "filters", "dim": "in", "fixed": "zero"}):
        matched, learned = match(model, init_model, spec, 0.3)
        assert abs(learned / (0.3 * total) - 1) <= 0.10, (matched, learned)
        assert 0 < matched["fraction"] <= 1


def test_every_shipped_sweep_grid_expands_to_valid_strategies():
    import yaml
    sys.path.insert(0, str(ROOT / "tools"))
    from sweep import expand

    from partial_ft.strategies.registry import parse_spec

    for path in sorted((ROOT / "recipes" / "sweeps").glob("*.yaml")):
        grid = yaml.safe_load(path.read_text())
        specs = expand(grid["strategies"])
        assert len(specs) >= 8, path
        for spec in specs:
            parse_spec(spec)


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
    assert (out / "accuracy_vs_params.png").stat().st_size > 1000
    assert (out / "accuracy_vs_params.svg").is_file()
    assert "filters" in (out / "fits.json").read_text()


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
    assert all(cells[3].strip() == f"{summaries[cells[0].strip()]['val_top1']:.4f} ± 0.0000" for cells in md)

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
    assert rows[0].startswith("layer,entries,learned") and len(rows) > 5
    assert (out / "member0" / "weight_stats.png").stat().st_size > 1000
