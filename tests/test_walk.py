"""Walking user folders never loops (issue 21.9): predict's folders and `**` globs and the data files globs
enter each real folder once, however many links lead back to it, and find what glob would."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from partial_ft import walk
from partial_ft.predict import expand_inputs


@pytest.fixture
def tree(tmp_path) -> Path:
    """a/1.png, a/b/2.png, c/3.jpg, c/notes.txt, .hidden/4.png; a/up and a/b/up and c/up link to the root
    (two links on one path: glob's `**` doubles its work per level and never finishes)."""
    root = tmp_path / "images"
    for name in ("a/1.png", "a/b/2.png", "c/3.jpg", "c/notes.txt", ".hidden/4.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    for link in ("a/up", "a/b/up", "c/up"):
        (root / link).symlink_to(root, target_is_directory=True)
    return root


@pytest.fixture(autouse=True)
def alarm():
    """A loop is a failure within 30 s, not a hung test run."""
    def hung(*_):
        raise TimeoutError("walking looped")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("pattern, expected", [
    ("**/*.png", ["a/1.png", "a/b/2.png"]),
    ("*/*.png", ["a/1.png"]),
    ("**/*.jpg", ["c/3.jpg"]),
    # from a, the root is first reached through a/b/up (walked there, once); a/up and a/b/up/a are not re-entered
    ("a/**", ["a/1.png", "a/b", "a/b/2.png", "a/b/up", "a/b/up/a", "a/b/up/c", "a/b/up/c/3.jpg", "a/b/up/c/notes.txt", "a/b/up/c/up",
              "a/up"]),
    ("**/2.png", ["a/b/2.png"]),
    (".hidden/*.png", [".hidden/4.png"]),
    ("*/[0-9].*", ["a/1.png", "c/3.jpg"]),
    ("nothing/**/*.png", []),
])
def test_glob_matches_like_glob_without_looping(tree, pattern, expected):
    assert [p.relative_to(tree).as_posix() for p in walk.glob(f"{tree}/{pattern}")] == expected


@pytest.mark.parametrize("inputs, expected", [
    (["{root}"], [".hidden/4.png", "a/1.png", "a/b/2.png", "c/3.jpg"]),  # a folder input walks hidden folders too
    (["{root}/**/*.png"], ["a/1.png", "a/b/2.png"]),
    # links are followed, each real folder entered once: from a, the root through a/b/up, never a again
    (["{root}/a"], ["a/1.png", "a/b/2.png", "a/b/up/.hidden/4.png", "a/b/up/c/3.jpg"]),
    (["{root}/a/up/c"], ["a/up/c/3.jpg", "a/up/c/up/.hidden/4.png", "a/up/c/up/a/1.png", "a/up/c/up/a/b/2.png"]),
])
def test_predict_inputs_over_a_link_cycle(tree, inputs, expected):
    found = expand_inputs([i.format(root=tree) for i in inputs])
    names = [p.relative_to(tree).as_posix() for p in found]
    assert names == expected


def test_a_data_files_glob_over_a_link_cycle(tree):
    from datasets import Dataset

    from partial_ft.data_sources import load_raw
    from partial_ft.sections import DataCfg

    for name, labels in (("a/part-0.parquet", [0, 1]), ("a/b/part-1.parquet", [1, 0, 1])):
        Dataset.from_dict({"label": labels, "x": [0.5] * len(labels)}).to_parquet(str(tree / name))
    raw = load_raw(DataCfg(dataset=f"{tree}/**/*.parquet"))
    assert list(raw["train"]["label"]) == [1, 0, 1, 0, 1]  # each file once, in path order: a/b/... before a/part


def test_an_image_folder_dataset_with_a_link_cycle_loads_each_image_once(tmp_path):
    from PIL import Image

    from partial_ft import data
    from partial_ft.sections import DataCfg

    root = tmp_path / "pets"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / label / f"{i}.png")
        (root / label / "up").symlink_to(root, target_is_directory=True)
    bundle = data.load(DataCfg(dataset=str(root), val_fraction=0.34))
    assert bundle.class_names == ["cat", "dog"] and len(bundle.train) + len(bundle.val) == 6
