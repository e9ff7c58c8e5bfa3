"""`train.keep`: which epoch's weights a run keeps. `last` (the default) keeps where training ended;
`best` keeps the epoch with the best validation top-1, which is only honest when validation is a
carve-out of train (`data.tune_fraction`): chosen on the real validation split, the reported number
would be a peeked one, so the recipe refuses that (recipe.py)."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .learned import learned_tensors


class Keeper:
    """Holds a copy of the learned tensors of the best epoch so far (memory in proportion to what
    learns) and its metrics; `restore` puts them back into the model at the end."""

    def __init__(self, mode: str):
        self.mode = mode
        self.best: Optional[dict[str, Any]] = None  # the best epoch's metrics
        self.tensors: dict[str, torch.Tensor] = {}

    def offer(self, model: nn.Module, metrics: dict[str, Any]) -> None:
        """After an epoch's evaluation (with the values the run would keep, EMA ones when on)."""
        if self.mode != "best" or (self.best is not None and metrics["val_top1"] <= self.best["val_top1"]):
            return
        self.best = dict(metrics)
        self.tensors = {f"best.{k}": v.detach().cpu().clone() for k, v in learned_tensors(model).items()}

    def restore(self, model: nn.Module) -> Optional[dict[str, Any]]:
        """Put the best epoch's values into the model; returns its metrics (None for `last`)."""
        if self.mode != "best" or self.best is None:
            return None
        with torch.no_grad():
            for k, v in learned_tensors(model).items():
                v.copy_(self.tensors[f"best.{k}"])
        return self.best

    def state(self) -> dict[str, Any]:
        """Plain data for a checkpoint's train_state.json (the tensors go with the checkpoint's tensors)."""
        return {"mode": self.mode, "best": self.best}

    def load(self, state: Optional[dict[str, Any]], tensors: dict[str, torch.Tensor]) -> None:
        if state:
            self.best = state.get("best")
        self.tensors = {k: v for k, v in tensors.items() if k.startswith("best.")}
