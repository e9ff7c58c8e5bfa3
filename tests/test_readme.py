"""The README stays true: every recipe key and every strategy option is documented there."""
from __future__ import annotations

import dataclasses

from conftest import ROOT
from partial_ft import list_strategies
from partial_ft.recipe import SECTIONS

README = (ROOT / "README.md").read_text()


def test_every_recipe_key_is_documented():
    missing = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)
               if f"`{s}.{f.name}`" not in README]
    assert not missing, f"README lacks recipe keys: {missing}"


def test_every_strategy_and_option_is_documented():
    for s in list_strategies():
        assert f"`{s.name}`" in README, s.name
        for option in s.option_defaults():
            assert f"`{option}`" in README, f"{s.name}.{option}"


def test_quickstart_commands_are_the_ones_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && python -m pytest' in README
    assert 'pip install -e ".[test]" && python -m pytest' in ci
    assert "pip install -e . && python -m partial_ft --recipe recipes/quickstart.yaml" in README


def test_strategy_table_is_the_one_the_options_write():
    """The docs' strategy table is `strategies --markdown`: each option's help text lives once, in its
    options dataclass."""
    docs = README + "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    for s in list_strategies():
        assert s.markdown_row() in docs, f"regenerate the table: python -m partial_ft strategies --markdown ({s.name})"
