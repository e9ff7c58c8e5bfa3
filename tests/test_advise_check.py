"""The exhaustive check of an advice (partial_ft.advise.check, tools/advise_check.py): the check sweep's grid
from a hand-made state.json (as advise writes it now, and as an older advise wrote it), and the verdict
on a hand-made results.csv. No training."""
from __future__ import annotations

import csv
import json
import sys

import pytest
import yaml

from conftest import ROOT
from partial_ft import advise
from partial_ft.errors import UserError
from partial_ft.sweep import plan

sys.path.insert(0, str(ROOT / "tools"))
import advise_check  # noqa: E402  (a script of tools/, not a module of the package)

LRS = [0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3]
PROBE = {"name": "head", "norm_stats": "freeze", "overrides": ["train.solver=exact", "data.augment=false"]}
PROBE_LABEL = "head(norm_stats=freeze) [train.solver=exact, data.augment=false]"


def _saved(top1, learned, lr=None, candidate=None, spec=None, n=1000):
    row = {"epoch_seconds": 1.0, "setup_seconds": 0.5, "trial_epochs": 2, "peak_memory_bytes": None,
           "delta_bytes": None, "learned": learned, "top1": top1, "n_eval": n, "lr": lr, "trials": 6, "pruned": 2}
    return {**row, **({"candidate": candidate, "spec": spec} if candidate else {})}


def _state(folder, rows, **meta):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json").write_text(json.dumps({"fingerprint": "f", **meta, "rows": rows}))
    return folder


# as advise writes it now: the sized strategies recorded. `norm`, `block` and `auto` were skipped (absent).
# Carve-out top-1 on 1,000 images: bias 0.960 is within two of full's standard errors of its 0.970
# (0.970 - 2 * 0.005394 = 0.9592), and the cheapest such: it is the recommendation.
NEW = {"probe": _saved(0.90, 970, None, "probe", {"name": "head", "norm_stats": "freeze"}),
       "bias": _saved(0.960, 2010, 0.003, "bias", {"name": "bias"}),
       "filters(fraction=0.05)": _saved(0.962, 37000, 0.01, "filters", {"name": "filters", "fraction": 0.05}),
       "lora(rank=4)": _saved(0.965, 37228, 0.001, "lora", {"name": "lora", "rank": 4}),
       "full": _saved(0.970, 373658, 0.0003, "full", {"name": "full"})}
# as today's advise on digits wrote it (no strategies recorded: read back from the labels); none tuned yet
OLD = {name: _saved(None, learned) for name, learned in [
    ("probe", 5130), ("norm", 14730), ("bias", 9930), ("block(index=auto)", 14666),
    ("filters(fraction=0.017907)", 213789), ("auto(budget=223632)", 223626), ("lora(rank=6)", 220668),
    ("full", 11181642)]}
GRIDS = [  # (state rows, the grid's strategies, written down)
    (NEW, [PROBE, {"name": "bias"}, {"name": "filters", "fraction": 0.05}, {"name": "lora", "rank": 4},
           {"name": "full"}]),
    (OLD, [PROBE, {"name": "norm"}, {"name": "bias"}, {"name": "block", "index": "auto"},
           {"name": "filters", "fraction": 0.017907}, {"name": "auto", "score": "fisher", "budget": 223632},
           {"name": "lora", "rank": 6}, {"name": "full"}]),
]


@pytest.mark.parametrize("rows,strategies", GRIDS)
def test_check_grid_holds_the_candidates_as_sized_exhaustive_lr_three_seeds(tmp_path, tiny_recipe, rows,
                                                                             strategies):
    folder = _state(tmp_path / "advice", rows)
    path = advise.write_check_grid(folder)
    assert path == folder / "check.yaml"
    grid = yaml.safe_load(path.read_text())
    assert grid == {"seeds": [0, 1, 2], "tune": {"train.lr": LRS}, "search": {"pruner": "none"},
                    "tune_fraction": 0.2, "strategies": strategies}
    assert f"--grid {path} --out {folder / 'check'}" in path.read_text()  # the command, in a comment
    # the sweep takes it: the probe alone trains with the exact solver and without augmentation
    base = tiny_recipe("base", data={"augment": True})
    runs = plan.load(base, path, tmp_path / "check", [])
    raws = [runs.tune_job(i, {"train.lr": 0.01}).raw for i in range(len(strategies))]
    assert [(r["train"].get("solver"), r["data"]["augment"], r["data"]["tune_fraction"]) for r in raws] == \
        [("exact", False, 0.2)] + [(None, True, 0.2)] * (len(strategies) - 1)
    assert runs.configs[0].label == PROBE_LABEL


def test_check_grid_of_a_folder_without_advice_or_candidates_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="holds no advice"):
        advise.write_check_grid(tmp_path)
    with pytest.raises(UserError, match="holds no candidate: advise skipped them all"):
        advise.write_check_grid(_state(tmp_path / "empty", {}))


def _results(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["options", "control_for", "learned_params", "train.lr", "val_top1_mean",
                               "val_top1_std", "seeds"])
        w.writeheader()
        for options, control_for, learned, mean in rows:
            w.writerow({"options": options, "control_for": control_for, "learned_params": learned, "train.lr": 0.01,
                        "val_top1_mean": mean, "val_top1_std": 0.004, "seeds": 3})
    return path


# (lora's validation top-1 or None: not in results.csv, the best within the budget, difference, within 0.01)
# bias (recommended) 0.9500; filters 0.9580; full 0.9750 is outside the budget and never the best; a random
# control at 0.99 is no candidate.
VERDICTS = [
    (0.9610, "lora(rank=4)", 0.0110, False),
    (0.9590, "lora(rank=4)", 0.0090, True),
    (0.9450, "filters(fraction=0.05)", 0.0080, True),
    (None, "filters(fraction=0.05)", 0.0080, None),
]


@pytest.mark.parametrize("lora,best,difference,within", VERDICTS)
def test_verdict_compares_the_recommended_with_the_best_within_the_budget(tmp_path, capsys, lora, best, difference,
                                                                          within):
    folder = _state(tmp_path / "advice", NEW, budget=40000, total=373658)
    rows = [(PROBE_LABEL, "", 970, 0.90), ("bias", "", 2010, 0.95), ("filters(fraction=0.05)", "", 37000, 0.958),
            ("filters(fraction=0.0054, select=random)", "bias", 2010, 0.99), ("full", "", 373658, 0.975)]
    _results(folder / "check" / "results.csv", rows + ([("lora(rank=4)", "", 37228, lora)] if lora else []))
    assert advise_check.main(["--advice", str(folder)]) == 0
    text = capsys.readouterr().out
    assert text == (folder / "check.md").read_text()
    verdict = advise.check_advice(folder)[1]
    assert verdict.recommended.candidate.row.name == "bias" and verdict.recommended.mean == 0.95
    assert verdict.best.candidate.row.name == best and verdict.full.mean == 0.975
    assert verdict.difference == pytest.approx(difference, abs=1e-9) and verdict.within is within
    assert "- Recommended: `bias`: 0.9500 ± 0.0040 (3 seeds)" in text
    assert f"- The best at or below the budget: `{best}`" in text
    assert "- `full` (outside the budget): 0.9750 ± 0.0040 (3 seeds)" in text
    assert f"- Difference (best − recommended): {difference:.4f}" in text
    answer = {True: "yes", False: "no", None: "unknown"}[within]
    assert f"- Within 0.01: **{answer}**" in text
    if lora is None:
        assert "the check sweep lacks `lora(rank=4)`" in text


ERRORS = [  # (what the folder holds, the one error line)
    ({}, "holds no advice (no state.json)"),
    ({"state": NEW}, "no check results at"),
    ({"state": OLD, "results": True}, "advise has no recommendation yet"),
]


@pytest.mark.parametrize("holds,message", ERRORS)
def test_tool_mistakes_are_one_error_line_exit_2(tmp_path, capsys, holds, message):
    folder = tmp_path / "advice"
    folder.mkdir()
    if "state" in holds:
        _state(folder, holds["state"])
    if holds.get("results"):
        _results(folder / "check" / "results.csv", [("bias", "", 2010, 0.95)])
    assert advise_check.main(["--advice", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (folder / "check.md").exists()


def test_tool_writes_the_grid_for_an_existing_folder(tmp_path, capsys):
    folder = _state(tmp_path / "advice", NEW)
    assert advise_check.main(["--advice", str(folder), "--grid", str(tmp_path / "g.yaml")]) == 0
    assert yaml.safe_load((tmp_path / "g.yaml").read_text())["strategies"] == GRIDS[0][1]
    assert f"--grid {tmp_path / 'g.yaml'}" in capsys.readouterr().out
