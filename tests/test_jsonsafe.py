"""Strict JSON out (issue 21.8): what partial_ft writes parses with any JSON reader; a value that is not a
finite number is written as null, never as NaN / Infinity."""
from __future__ import annotations

import json
import math

import pytest

from partial_ft import jsonsafe
from partial_ft.rundir import RunFolder


def _strict(text: str):
    """json.loads that refuses NaN / Infinity, as jq or JavaScript would."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value, text", [
    ({"val_loss": math.nan, "val_top1": 0.5}, '{"val_loss": null, "val_top1": 0.5}'),
    ([math.inf, -math.inf, 1.0, 2], "[null, null, 1.0, 2]"),
    ({"nested": {"a": (math.nan, "x")}}, '{"nested": {"a": [null, "x"]}}'),
    ({"ok": True, "n": None, "s": "NaN"}, '{"ok": true, "n": null, "s": "NaN"}'),
])
def test_non_finite_numbers_are_written_as_null(value, text):
    assert jsonsafe.dumps(value) == text
    _strict(jsonsafe.dumps(value))


def test_the_run_folder_writes_strict_json(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.write_json("summary.json", {"val_loss": math.inf, "epochs": [1.0, math.nan]})
    folder.append_metrics({"epoch": 1, "train_loss": math.nan})
    assert _strict((folder.path / "summary.json").read_text()) == {"val_loss": None, "epochs": [1.0, None]}
    assert _strict((folder.path / "metrics.jsonl").read_text()) == {"epoch": 1, "train_loss": None}
