"""partial_ft.yamlsafe: the one YAML reader for recipes, overrides, grids and recorded recipes refuses alias
bombs, self-references and duplicate keys, and every refusal is one short UserError line."""
from __future__ import annotations

import pytest

from conftest import bomb
from partial_ft import recipe as recipes
from partial_ft import yamlsafe
from partial_ft.errors import UserError, shorten
from partial_ft.sweep import grid as grids


# (YAML text, the value it reads as) — what must keep working
ACCEPTED = {
    "plain": ("a: 1\nb: [1, 2]\n", {"a": 1, "b": [1, 2]}),
    "small-alias": ("a: &x [1, 2]\nb: *x\nc: *x\n", {"a": [1, 2], "b": [1, 2], "c": [1, 2]}),
    "merge-then-override": ("x: &x {k: 1, j: 2}\ny:\n  <<: *x\n  k: 3\n", {"x": {"k": 1, "j": 2}, "y": {"k": 3, "j": 2}}),
    "empty": ("", None),
    # 99 aliases of a 100-node list add 9,900 nodes, under the 10,000 limit
    "alias-expanding-near-the-limit": (bomb(2, 99), {"k0": ["x"] * 99, "k1": [["x"] * 99] * 99}),
}

# (YAML text, what the one-line error must say)
REFUSED = {
    # 1 + 9 keys + levels of 1 + 9 x (the level below): 10, 91, 820, ... 435,848,050; written: 28 nodes
    "billion-laughs": (bomb(9), "anchors and aliases expand to 490,329,064 values, more than 10,028 allowed"),
    "billion-laughs-flow": (bomb(9, flow=True), "refused as a YAML bomb"),
    # 1 + 2 keys + 102 + 101 x 102 = 10,408 nodes from 106 written: 10,302 added, over the limit
    "just-past-the-limit": (bomb(2, 101), "expand to 10,408 values, more than 10,106 allowed"),
    "self-reference": ("a: &a [1, *a]\n", "an alias refers to the node that contains it (line 1)"),
    "self-reference-mapping": ("a: &a {b: *a}\n", "an alias refers to the node that contains it"),
    "duplicate-key": ("a: 1\nb: 2\na: 3\n", "duplicate key 'a' (first at line 1) at line 3"),
    "duplicate-nested-key": ("t:\n  lr: 1\n  lr: 2\n", "duplicate key 'lr' (first at line 2) at line 3"),
    "duplicate-alias-key": ("- &k a\n- {*k : 1, *k : 2}\n", "duplicate key 'a'"),
    "duplicate-one-and-true": ("{1: a, true: b}\n", "duplicate key True"),
    "deep-nesting": ("[" * 5000 + "]" * 5000, "invalid YAML: nested too deeply"),
    "python-tag": ("a: !!python/object/apply:os.system ['true']\n", "invalid YAML at line 1"),
    "undefined-alias": ("a: *nope\n", "found undefined alias"),
}


@pytest.mark.parametrize("case", ACCEPTED)
def test_accepted(case):
    text, value = ACCEPTED[case]
    assert yamlsafe.load(text, "f.yaml") == value


@pytest.mark.parametrize("case", REFUSED)
def test_refused_as_one_short_line(case):
    text, message = REFUSED[case]
    with pytest.raises(UserError) as e:
        yamlsafe.load(text, "f.yaml")
    line = str(e.value)
    assert line.startswith("f.yaml: ") and message in line, line
    assert "\n" not in line and len(line) < 300


OVERRIDE_BOMB = "train.log_with=" + bomb(9, flow=True)


@pytest.mark.parametrize("overrides, message", [
    ([OVERRIDE_BOMB], "override 'train.log_with': anchors and aliases expand to"),
    (["train.kwargs={a: 1, a: 2}"], "override 'train.kwargs': duplicate key 'a'"),
    (["model.kwargs={a: 1, a: 2}"], "duplicate key 'a'"),
    (["data.mean=[&a [1, *a]]"], "an alias refers to the node that contains it"),
])
def test_overrides_refuse_what_files_refuse(tmp_path, overrides, message):
    path = tmp_path / "r.yaml"
    path.write_text("train: {epochs: 1}\n")
    with pytest.raises(UserError) as e:
        recipes.load(path, overrides)
    assert message in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("strategies: [{name: head}]\nseeds: [0]\nseeds: [1]\n", "duplicate key 'seeds'"),
    ("strategies: [{name: head}]\noverrides: " + bomb(9, flow=True) + "\n", "refused as a YAML bomb"),
])
def test_grid_files_use_the_safe_loader(tmp_path, text, message):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        grids.load(path)
    assert message in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("value, expected", [
    ("short", "'short'"),
    ("x" * 5_000_000, "'" + "x" * 80 + "...' (5,000,000 characters)"),
    ([1] * 100, "[" + "1, " * 26 + "1... (300 characters)"),
    (1.5, "1.5"),
])
def test_shorten_cuts_values_to_a_readable_length(value, expected):
    assert shorten(value) == expected
