"""The training curve of a run (RUN_DIR/training_curve.png): training loss and validation top-1 against step.

matplotlib is a dependency: the plot is in every run folder, whatever is installed. Drawn with the Agg
backend (no display needed), at the end of a run, from what the run recorded (loss every
`train.log_every` steps, metrics at each epoch end).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

def plot(losses: list[tuple[int, float]], evals: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Two panels over a shared step axis: the training loss (`losses`: (step, mean loss since the
    previous point)) and validation top-1 (`evals`: metrics.jsonl records with `step` and `val_top1`).
    Writes a PNG to `path` and returns it."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window, works on headless machines
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 5.5), constrained_layout=True)
    try:
        if losses:
            top.plot([s for s, _ in losses], [v for _, v in losses], color="tab:blue", linewidth=1.2)
        top.set_ylabel("training loss")
        top.grid(alpha=0.3)
        if title:
            top.set_title(title, fontsize=10)
        points = [(e["step"], e["val_top1"]) for e in evals if e.get("val_top1") is not None]
        if points:
            bottom.plot([s for s, _ in points], [v for _, v in points], marker="o", color="tab:green")
            for step, value in points[-1:]:
                bottom.annotate(f"{value:.4f}", (step, value), textcoords="offset points", xytext=(-10, -14),
                                ha="right", fontsize=9)
        bottom.set_ylabel("validation top-1")
        bottom.set_ylim(0, 1.02)
        bottom.set_xlabel("step (optimizer updates)")
        bottom.grid(alpha=0.3)
        fig.savefig(path, dpi=110, format="png")  # the path may be a temporary name without the suffix
    finally:
        plt.close(fig)
    return path
