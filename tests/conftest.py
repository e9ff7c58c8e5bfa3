"""Shared test setup: offline always, small recipes on the built-in digits, and a CLI runner."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

# never touch the network: set before datasets / huggingface_hub are imported anywhere
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from datasets import ClassLabel, Features, Image  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# a tiny, fast run on digits: a few steps of a small timm model at 32x32, no worker processes
TINY = {
    "model": {"name": "test_resnet"},
    "data": {"dataset": "digits", "input_size": 32, "crop_pct": 1.0, "augment": False, "num_workers": 0,
             "max_train_samples": 256, "max_val_samples": 128},
    "strategy": {"name": "filters", "fraction": 0.25, "fixed": "random"},
    "train": {"epochs": 1, "max_steps": 4, "batch_size": 32, "lr": 0.003, "progress": False},
}


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600,
            module: tuple[str, ...] = (sys.executable, "-m", "partial_ft")) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (offline, CPU)."""
    full_env = {**os.environ, "ACCELERATE_USE_CPU": "true", **(env or {})}
    return subprocess.run([*module, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tiny_recipe(tmp_path: Path):
    """Write the TINY recipe (deep-merged with overrides) to tmp_path and return its path."""
    def make(name: str = "tiny", **sections) -> Path:
        recipe = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY.items()}
        for section, value in sections.items():
            if isinstance(value, dict) and isinstance(recipe.get(section), dict) and section != "strategy":
                recipe[section] = {**recipe[section], **value}
            else:
                recipe[section] = value
        recipe.setdefault("output", {})["dir"] = str(tmp_path / "runs" / name)
        return write_recipe(tmp_path / f"{name}.yaml", recipe)
    return make


def bomb(levels: int, width: int = 9, flow: bool = False) -> str:
    """Nested anchors: `width ** levels` leaves in a few hundred bytes."""
    names = [f"l{i}" for i in range(levels)]
    rows = [f"&{names[0]} [" + ",".join(["x"] * width) + "]"]
    rows += [f"&{names[i]} [" + ",".join([f"*{names[i - 1]}"] * width) + "]" for i in range(1, levels)]
    return "[" + ",".join(rows) + "]" if flow else "\n".join(f"k{i}: {row}" for i, row in enumerate(rows)) + "\n"


# --------------------------------------------------------------------------------------------
# small datasets with one thing wrong (data.py's checks, and the CLI's error table)


def png_bytes(image: PILImage.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
def no_label_parquet(tmp_path: Path) -> Path:
    path = tmp_path / "nolabel.parquet"
    pq.write_table(pa.table({"pix": [b"x"] * 4, "score": [0.1, 0.2, 0.3, 0.4]}), path)
    return path
def no_image_parquet(tmp_path: Path) -> Path:
    path = tmp_path / "noimage.parquet"
    pq.write_table(pa.table({"name": ["a", "b"], "label": [0, 1]}), path)
    return path
def out_of_range(tmp_path: Path) -> Path:
    """A parquet file whose metadata says ClassLabel with 2 classes, but one row holds 5."""
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    png = png_bytes(PILImage.new("L", (4, 4)))
    table = pa.table({"image": [{"bytes": png, "path": None}] * 3, "label": [0, 1, 5]}).cast(features.arrow_schema)
    pq.write_table(table, tmp_path / "oor.parquet")
    return tmp_path / "oor.parquet"
def negative_ints(tmp_path: Path) -> Path:
    path = tmp_path / "neg.parquet"
    pq.write_table(pa.table({"image": [png_bytes(PILImage.new("L", (4, 4)))] * 3, "label": [0, 1, -3]}), path)
    return path
def parquet_with_labels(tmp_path: Path, name: str, labels: list, val_labels: list | None = None) -> Path:
    """Parquet with the given labels (a train file, and a validation file when val_labels is given)."""
    png = png_bytes(PILImage.new("L", (4, 4)))
    folder = tmp_path / name
    folder.mkdir()
    for split, values in (("train", labels), ("validation", val_labels)):
        if values is not None:
            pq.write_table(pa.table({"image": [png] * len(values), "label": values}), folder / f"{split}.parquet")
    return folder if val_labels is not None else folder / "train.parquet"
def empty_class(tmp_path: Path) -> Path:
    """An imagefolder whose `emu` class folder holds no image."""
    root = tmp_path / "folders"
    for name in ("cat", "dog", "emu"):
        (root / "train" / name).mkdir(parents=True)
    for name in ("cat", "dog"):
        for i in range(3):
            PILImage.new("L", (4, 4), color=i).save(root / "train" / name / f"{i}.png")
    return root
