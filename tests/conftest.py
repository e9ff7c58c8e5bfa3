"""Shared test setup: offline always, small recipes on the built-in digits, and a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# never touch the network: set before datasets / huggingface_hub are imported anywhere
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import yaml  # noqa: E402

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
