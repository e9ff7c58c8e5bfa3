"""What summary.json holds, built in one place from the run's setup and what its loop ended with, and the
run's finishing step that hands it to the run folder."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from .prepare import Setup
from .progress import Progress, peak_memory_bytes
from .rundir import RunFolder
from .version import __version__


@dataclass
class Trained:
    """What the training loop ends with, beyond the model."""

    progress: Progress
    optimizer_state_bytes: int  # per-parameter optimizer state (momentum, Adam moments, ...)
    feature_cache: Optional[dict[str, Any]]  # cache.Cached.info, when trained from cached features
    kept: Optional[dict[str, Any]] = None  # train.keep: best: the kept epoch's metrics (None: the last epoch's)


def finish(setup: Setup, folder: RunFolder, trained: Trained, model: nn.Module) -> dict[str, Any]:
    """The run's last step, as one: the summary, and (main process) what the run folder keeps of it: the
    model card, the curve, the delta and summary.json (RunFolder.finish). Returns the summary."""
    summary = summarize(setup, trained)
    if setup.accelerator.is_main_process:
        folder.finish(summary, model, setup.recipe, setup.plan, setup.bundle.class_names, setup.data_config,
                      setup.fingerprint)
    return summary


def summarize(setup: Setup, trained: Trained) -> dict[str, Any]:
    """The plan's counts, the last epoch's metrics, throughput and memory. train_seconds includes
    extracting cached features; train_images_per_second is the training steps' own, in the steady state
    (see progress.Meter). `delta_bytes` stays None here: the run folder fills it when it saves the delta
    (the main process; the others save none)."""
    recipe, plan, p = setup.recipe, setup.plan, trained.progress
    metrics, device = trained.kept or p.metrics, setup.accelerator.device
    feature_cache = dict(trained.feature_cache) if trained.feature_cache else None
    extract = feature_cache.pop("extract_seconds") if feature_cache else 0.0
    return {
        "model": recipe.model.name,
        "strategy": plan.label,
        "strategy_spec": recipe.strategy,
        "learned_params": plan.learned,
        "total_params": plan.total,
        "learned_fraction": plan.fraction,
        "val_top1": metrics.get("val_top1"),
        "val_top5": metrics.get("val_top5"),
        "val_loss": metrics.get("val_loss"),
        "epochs": p.metrics.get("epoch", 0),
        "kept_epoch": trained.kept["epoch"] if trained.kept else None,
        "steps": p.step,
        "solver": p.solver,
        "train_seconds": round(p.train_seconds + extract, 3),
        "train_images_per_second": (p.steady_images / p.steady_seconds if p.steady_seconds else
                                    p.images / p.train_seconds if p.train_seconds else 0.0),
        "optimizer_state_bytes": trained.optimizer_state_bytes,
        "peak_memory_bytes": peak_memory_bytes(device),
        "feature_cache": feature_cache,
        "feature_extract_seconds": round(extract, 3),
        "scoring_seconds": round(plan.scoring_seconds, 3),
        "feature_cache_note": setup.cache.note,
        "skipped_images": p.skipped,
        "dropped_images": p.dropped_images,
        "nan_skipped_batches": p.nan_skipped,
        "num_processes": setup.accelerator.num_processes,
        "num_classes": len(setup.bundle.class_names),
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in setup.data_config.items()},
        "seed": recipe.train.seed,
        "partial_ft_version": __version__,
        "preload": setup.preload,
        "delta_bytes": None,
    }
