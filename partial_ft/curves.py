"""The training curve of a run (RUN_DIR/training_curve.png): training loss and validation top-1 against step,
or, for the exact solver (no steps), its cross-validation curve.

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


def plot_solver(solver: dict[str, Any], val_top1: float, path: Path, title: str = "") -> Path:
    """The exact solver's choice: cross-validated top-1 on train against the L2 strength (log x), the chosen
    strength marked, and the refit model's validation top-1 as a reference line. Writes a PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted((float(s), a) for s, a in solver.get("cv_top1", {}).items())
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    try:
        if points:
            ax.plot([s for s, _ in points], [a for _, a in points], marker="o", color="tab:blue",
                    label="cross-validated top-1 on train")
            ax.set_xscale("log")
        chosen = float(solver["strength"])
        ax.axvline(chosen, color="tab:orange", linestyle="--", label=f"chosen strength {chosen:.3g}")
        ax.axhline(val_top1, color="tab:green", linestyle=":", label=f"validation top-1 {val_top1:.4f} (refit)")
        ax.set_xlabel("L2 strength")
        ax.set_ylabel("top-1")
        ax.set_title(title or "exact solver", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        fig.savefig(path, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


def plot_confusion(matrix: list[list[int]], labels: list[str], path: Path, title: str = "") -> Path:
    """A confusion matrix (rows: true class, columns: predicted class), each row as shares of that class's
    images, with the counts written in the cells when there are few classes. Writes a PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(matrix, dtype=np.int64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    k = len(labels)
    size = min(max(4.0, 0.45 * k + 2), 24)
    fig, ax = plt.subplots(figsize=(size + 1, size), constrained_layout=True)
    try:
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
        if k <= 40:  # beyond that, names and numbers would overlap
            ax.set_xticks(range(k), labels, rotation=90, fontsize=8)
            ax.set_yticks(range(k), labels, fontsize=8)
        if k <= 20:
            for i, j in zip(*np.nonzero(counts)):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(title, fontsize=10)
        fig.savefig(path, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path
