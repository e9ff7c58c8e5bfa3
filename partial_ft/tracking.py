"""Experiment tracking through Accelerate's trackers (`train.log_with`: tensorboard, wandb, mlflow, ...):
the resolved recipe as hyperparameters, per-step loss / lr / images per second, per-epoch validation
metrics. Local trackers write under RUN_DIR/logs/. (Which trackers a recipe may name: the train section's
validation, sections.check_trackers.)"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LOGS = "logs"
def accelerator_kwargs(log_with: list[str], run_dir: Path) -> dict[str, Any]:
    """Arguments for Accelerator(...): the trackers, logging under run_dir/logs."""
    if not log_with:
        return {}
    from accelerate.utils import ProjectConfiguration

    return {"log_with": list(log_with),
            "project_config": ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / LOGS))}


def hparams(resolved: dict[str, Any]) -> dict[str, Any]:
    """The resolved recipe as flat `section.key` hyperparameters with scalar values (what every tracker
    accepts: lists, mappings and null become JSON text)."""
    flat: dict[str, Any] = {}
    for section, node in resolved.items():
        items = node.items() if isinstance(node, dict) and section != "strategy" else [(None, node)]
        for key, value in items:
            name = f"{section}.{key}" if key is not None else section
            flat[name] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return flat


def start(acc: Any, project: str, resolved: dict[str, Any]) -> None:
    """Open the trackers (each process calls this; Accelerate logs from the main process only)."""
    if acc.log_with:
        acc.init_trackers(project, config=hparams(resolved))


def log(acc: Any, values: dict[str, Any], step: int) -> None:
    """Log the numeric values at `step` (None, e.g. top-5 with fewer than 5 classes, is left out)."""
    if acc.log_with:
        acc.log({k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                step=step)
