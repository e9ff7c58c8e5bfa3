"""The VTAB-1k grid's data form: CLIP_benchmark's webdataset layout (`clip-benchmark/wds_vtab-*` on the
Hub: `train/` and `test/` folders of .tar shards, each sample a `.webp` image and a `.cls` integer label),
here written locally so that the grid's overrides (label_column=cls, val_split=test, image_column
auto-detected) are checked offline."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from partial_ft import data
from partial_ft.sections import DataCfg

# (split, labels of its samples): written down here, not computed
SPLITS = {"train": [0, 1, 2, 0, 1, 2, 0, 1, 2, 2], "test": [2, 1, 0, 0]}


def _write_shard(folder: Path, labels: list[int]) -> None:
    folder.mkdir(parents=True)
    with tarfile.open(folder / "0.tar", "w") as tar:
        for i, label in enumerate(labels):
            image = io.BytesIO()
            Image.new("RGB", (8, 8), (40 * label, 0, 0)).save(image, format="webp", lossless=True)
            for ext, payload in (("webp", image.getvalue()), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"s{i:07d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def wds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wds_vtab")
    for split, labels in SPLITS.items():
        _write_shard(root / split, labels)
    return root


def test_clip_benchmark_webdataset_loads_as_the_vtab_grid_says(wds):
    b = data.load(DataCfg(dataset=str(wds), label_column="cls", val_split="test", image_column=None))
    assert (b.image_column, b.label_column) == ("webp", "cls")
    assert sorted(b.train["cls"]) == sorted(SPLITS["train"])
    assert sorted(b.val["cls"]) == sorted(SPLITS["test"])
    assert len(b.class_names) == 3
    assert b.train[0]["webp"].size == (8, 8)
