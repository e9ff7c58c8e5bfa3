"""Recipes: parsing, typed validation, overrides, and every shipped recipe validates."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from partial_ft import recipe as recipes

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_recipe_validates(path):
    r = recipes.load(path)
    assert r.name == path.stem
    # the resolved form is itself a valid recipe that resolves to the same thing
    again = recipes.from_dict(yaml.safe_load(r.to_yaml()), name=r.name)
    assert again.to_dict() == r.to_dict()


def test_defaults_and_required_key_names():
    r = recipes.from_dict({})
    d = r.to_dict()
    for dotted in ("model.name", "model.pretrained", "data.dataset", "train.epochs", "train.max_steps",
                   "train.batch_size", "train.lr", "train.seed", "output.dir"):
        section, key = dotted.split(".")
        assert key in d[section], dotted
    assert d["data"]["dataset"] == "digits"
    assert d["strategy"]["name"] == "full"
    assert r.run_dir == Path("runs/recipe")


def test_overrides_are_yaml_and_reach_any_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"strategy": {"name": "filters", "fraction": 0.1}}))
    r = recipes.load(path, ["train.epochs=3", "train.lr=1e-2", "data.input_size=[48, 40]", "model.kwargs.drop_rate=0.1",
                            "strategy.fraction=0.5", "strategy.dim=in", "output.dir=somewhere", "data.config=null"])
    assert r.train.epochs == 3 and r.train.lr == 0.01
    assert r.data.input_size == [48, 40]
    assert r.model.kwargs == {"drop_rate": 0.1}
    assert r.strategy["fraction"] == 0.5 and r.strategy["dim"] == "in"
    assert r.run_dir == Path("somewhere")


def test_override_into_a_strategy_list(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"strategy": [{"name": "block"}, {"name": "bias"}]}))
    r = recipes.load(path, ["strategy.0.index=last"])
    assert r.strategy[0]["index"] == "last" and r.strategy[1]["name"] == "bias"


FILTERS = {"strategy": {"name": "filters", "fraction": 0.1, "fixed": "random"}}


@pytest.mark.parametrize("raw, overrides, expected", [
    (FILTERS, ["strategy={name: norm}"], {"name": "norm", "head": True, "norm": False, "norm_stats": "update"}),
    (FILTERS, ["strategy=bias"], {"name": "bias", "head": True, "norm": False, "norm_stats": "update"}),
    (FILTERS, ["strategy={name: filters, count: 1}"],
     {"name": "filters", "head": True, "norm": True, "norm_stats": "update", "fraction": None, "count": 1,
      "dim": "out", "select": "first", "fixed": "keep", "layers": "conv", "seed": None}),
    (FILTERS, ["strategy=[{name: norm}, {name: bias, head: false}]"],
     [{"name": "norm", "head": True, "norm": False, "norm_stats": "update"},
      {"name": "bias", "head": False, "norm": False, "norm_stats": "update"}]),
    (FILTERS, ["strategy={name: norm}", "strategy.norm_stats=freeze"],
     {"name": "norm", "head": True, "norm": False, "norm_stats": "freeze"}),
    ({"strategy": {"name": "norm", "head": False}}, ["strategy.name=bias"],  # common options carry over
     {"name": "bias", "head": False, "norm": False, "norm_stats": "update"}),
])
def test_whole_strategy_node_overrides_replace_it(tmp_path, raw, overrides, expected):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert recipes.load(path, overrides).strategy == expected


# (recipe mistakes, one line each: test_errors.py's table, through the CLI)


@pytest.mark.parametrize("overrides, expected", [
    ([], []),
    (["train.lr=0.01"], ["train.lr"]),
    (["train.log_every=3", "train.progress=false", "train.keep_checkpoints=5"], []),  # they do not change the numbers
    (["output.dir=elsewhere"], []),  # it names a folder, not a run
    (["strategy.name=head", "data.mixup=0.2"], ["data.mixup", "strategy"]),
], ids=["same", "lr", "bookkeeping", "folder", "strategy-and-data"])
def test_differences_name_what_changes_the_run(overrides, expected):
    base = {"strategy": {"name": "full"}, "train": {"epochs": 2}}
    old = recipes.from_dict(base)
    assert recipes.differences(old, recipes.from_dict(recipes.apply_overrides(base, overrides))) == expected
