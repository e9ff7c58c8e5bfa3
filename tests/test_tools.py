"""tools/ scripts run end to end on tiny settings."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_bench_runs_and_reports_optimizer_state_of_the_learned_part(tmp_path):
    out = tmp_path / "bench.md"
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), "--size", "32", "--steps", "2",
                        "--warmup", "1", "--workers", "0", "--strategies", "full,filters_out", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| strategy")}
    assert set(rows) == {"full", "filters_out"}
    for row in rows.values():
        learned = int(row[2].split("(")[0].replace(",", ""))
        state_mib = float(row[6].split()[0])
        assert abs(state_mib - learned * 8 / 2**20) < 0.06  # AdamW: two fp32 moments per learned scalar
    assert float(rows["full"][4]) == 1.0


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
