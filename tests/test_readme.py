"""The README and the docs stay true: the README's commands are the ones CI runs and its Python snippets
run as written; the docs build with every link and anchor checked; the recipe-key and strategy tables,
generated from the code, hold every key and option with its default."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY, write_recipe
from partial_ft import list_strategies, reference
from partial_ft import recipe as recipes
from partial_ft.strategies import normalize_spec

README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def test_quickstart_commands_are_the_ones_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && python -m pytest' in README
    assert 'pip install -e ".[test]" && python -m pytest' in ci
    assert "pip install -e . && python -m partial_ft --recipe recipes/quickstart.yaml" in README


def test_offline_middle_block_command_is_sized_for_a_cpu():
    """The README's offline command: small images, few workers, fp32, residual branches awake at init."""
    command = re.search(r"python -m partial_ft --recipe recipes/middle_block.yaml (.*?)\n```", README, re.DOTALL)
    overrides = command.group(1).replace("\\\n", " ").split()
    r = recipes.load(ROOT / "recipes" / "middle_block.yaml", overrides)
    assert (r.data.dataset, r.model.pretrained, r.model.kwargs) == ("digits", False, {"zero_init_last": False})
    assert r.data.input_size == 32 and r.data.num_workers <= 2 and r.train.mixed_precision == "no"
    assert r.strategy["name"] == "block" and r.strategy["index"] == "middle"


def test_readme_is_a_landing_page_whose_links_resolve():
    assert len(README.splitlines()) < 150, "the reference belongs in docs/"
    links = re.findall(r"\]\(((?!https?://)[^)#]+)\)", README)
    assert "docs/recipe.md" in links and "docs/strategies.md" in links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing


def test_every_docs_page_is_in_the_nav():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))["nav"]

    def pages(node):
        if isinstance(node, str):
            return [node]
        items = node.values() if isinstance(node, dict) else node
        return [p for item in items for p in pages(item)]

    listed = set(pages(nav))
    assert not {p.name for p in DOCS.glob("*.md")} - listed
    assert not {p for p in listed if not (DOCS / p).is_file()}


def test_mkdocs_build_is_strict_clean(tmp_path):
    """Every link and anchor checked (mkdocs.yml's validation: warnings, and --strict fails on them)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "NO_MKDOCS_2_WARNING": "1"}
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    page = (tmp_path / "site" / "recipe" / "index.html").read_text()
    assert "<code>train.lr</code>" in page and "generated:" not in page
    assert "<code>fraction</code>" in (tmp_path / "site" / "strategies" / "index.html").read_text()


def _rows(table: str) -> dict[str, list[str]]:
    cells = [re.split(r"(?<!\\)\|", line)[1:-1] for line in table.splitlines()[2:]]
    return {c[0].strip().strip("`"): [x.strip() for x in c[1:]] for c in cells}


def test_generated_recipe_keys_hold_every_key_with_its_default():
    resolved = recipes.from_dict({}).to_dict()  # the defaults, as a run's recipe.yaml writes them
    for section, keys in resolved.items():
        if section == "strategy":
            continue
        rows = _rows(reference.table("recipe-keys", section))
        assert sorted(rows) == sorted(f"{section}.{k}" for k in keys)
        for key, default in keys.items():
            cell = rows[f"{section}.{key}"][0].strip("`")
            assert (cell if isinstance(default, str) else yaml.safe_load(cell)) == default, key
            assert rows[f"{section}.{key}"][1], f"{section}.{key} has no meaning"


@pytest.mark.parametrize("key, default", [("train.lr", "`0.001`"), ("data.num_workers", "`2`"),
                                          ("model.kwargs", "`{}`"), ("data.val_split", "`null`"),
                                          ("train.solver", "`auto`"), ("model.pretrained", "`false`")])
def test_generated_recipe_keys_examples(key, default):
    assert _rows(reference.table("recipe-keys", key.split(".")[0]))[key][0] == default


def test_generated_strategy_table_holds_every_option():
    rows = {name.split("`")[0]: cells for name, cells in _rows(reference.table("strategies")).items()}
    common = {"name", "head", "norm", "norm_stats"}
    assert sorted(rows) == sorted(s.name for s in list_strategies())
    for name, (summary, options) in rows.items():
        strategy = next(s for s in list_strategies() if s.name == name)
        assert normalize_spec({"name": name}).keys() - common == strategy.option_defaults().keys() - common
        for option, default in strategy.option_defaults().items():
            if option in common:
                continue
            shown = f"`{option}` (written by the run" if default is None and option in ("selected", "chosen") \
                else f"`{option}` ({reference.value(default)}"
            assert shown in options, (name, option)
    assert "<br>`dim` (`out`; `out` \\| `in` \\| `spatial`): slice along" in rows["filters"][1]
    common_rows = _rows(reference.table("common-options"))
    assert sorted(common_rows) == sorted(common - {"name"})
    assert common_rows["norm"][0] == "`false` (`true` for `auto`, `filters`)" and all(r[1] for r in common_rows.values())


@pytest.mark.parametrize("marker", ["<!-- generated: recipe-keys nosuch -->", "<!-- generated: nosuch -->"])
def test_an_unknown_generated_table_fails_the_build(marker):
    with pytest.raises(ValueError, match="unknown generated table"):
        reference.render(f"text\n{marker}\nmore")


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory) -> Path:
    """A folder holding a finished tiny run at runs/quickstart, as the snippets expect after the quickstart."""
    from partial_ft import train

    cwd = tmp_path_factory.mktemp("snippets")
    recipe = {**TINY, "output": {"dir": str(cwd / "runs" / "quickstart")}}
    train.run(recipes.load(write_recipe(cwd / "quickstart.yaml", recipe)))
    return cwd


@pytest.mark.parametrize("page", ["README.md", "docs/api.md"])
def test_python_snippets_run_as_written(page, quickstart_run, monkeypatch, capsys):
    blocks = _python_blocks((ROOT / page).read_text())
    assert blocks, page
    monkeypatch.chdir(quickstart_run)
    for block in blocks:
        exec(compile(block, page, "exec"), {"__name__": "__snippet__"})
    assert "parameters" in capsys.readouterr().out or page != "README.md"
