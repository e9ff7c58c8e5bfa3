"""What a training run says on the console, as plain lines: its plan, each epoch, its end. Formatting only
(train.py prints through accelerator.print, once per machine)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional


def plan_lines(plan: Any, preload: Optional[str], preload_seconds: float, resume_from: Optional[Path]) -> str:
    """The plan's table, what learns, what data.preload decided (None: preload off in the recipe), and the
    checkpoint a resumed run continues from."""
    scoring = f"; scoring pass {plan.scoring_seconds:.1f} s" if plan.scoring_seconds else ""
    lines = [plan.table(), f"strategy {plan.label}: learning {plan.learned:,} of {plan.total:,} parameters "
                           f"({100 * plan.fraction:.3g}%){scoring}"]
    if preload is not None:
        took = f", decoded in {preload_seconds:.1f} s" if preload_seconds else ""
        lines.append(f"preload: {preload}{took}")
    if resume_from is not None:
        lines.append(f"resuming from {resume_from}")
    return "\n".join(lines)


def silent_norms_warning(silent: list[str]) -> Optional[str]:
    """The warning for normalisation layers whose zero scale stays fixed (strategies.silent_norms), if any."""
    if not silent:
        return None
    return (f"warning: {len(silent)} normalisation layers ({', '.join(silent[:3])}{', ...' * (len(silent) > 3)}) "
            "have a zero scale that stays fixed, so the residual branches they end output nothing and never "
            "learn (timm's zero_init_last at random init); learn them (strategy.norm=true) or pass "
            "model.kwargs.zero_init_last=false")


def epoch_line(epoch: int, epochs: int, step: int, metrics: dict[str, Any], solved: bool = False) -> str:
    """One finished epoch (or the exact solve): its loss and validation accuracy."""
    top5 = "" if metrics["val_top5"] is None else f"  val_top5 {metrics['val_top5']:.4f}"
    where = "solved" if solved else f"epoch {epoch}/{epochs}  step {step}"
    return f"{where}  loss {metrics['train_loss']:.4f}  val_top1 {metrics['val_top1']:.4f}{top5}"


def summary_line(run_dir: Path, summary: dict[str, Any]) -> str:
    """The finished run in one line: where, how accurate, how much learned, how fast."""
    top5 = "" if summary["val_top5"] is None else f"  val_top5 {summary['val_top5']:.4f}"
    return (f"run folder {run_dir}: val_top1 {summary['val_top1']:.4f}{top5}  learned "
            f"{summary['learned_params']:,}/{summary['total_params']:,} params "
            f"({100 * summary['learned_fraction']:.3g}%)  {_speed(summary)}")


def _speed(summary: dict[str, Any]) -> str:
    if summary.get("solver", {}).get("solver") == "exact":  # no steps: the solve's time is the number
        return f"solved in {summary['solver']['seconds']:.1f} s"
    return f"{summary['train_images_per_second']:.0f} img/s"
