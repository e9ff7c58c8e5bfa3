"""What the loop does beyond plain steps, as the recipe asks (each off by default): mix batches
(mixing.py), average the learned tensors (ema.py), keep the best epoch (keep.py). One object the loop
calls at fixed points: before a forward, after an optimizer step, around an evaluation, at a
checkpoint, at the end."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Optional

import torch
from torch import nn

from . import mixing
from .ema import LearnedEma
from .keep import Keeper


class Extras:
    """The run's mixer, average and keeper. Build it after Accelerate's prepare (the EMA holds the
    tensors training updates, on their device)."""

    def __init__(self, recipe: Any, model: nn.Module, num_classes: int):
        t = recipe.train
        self.model = model  # the whole model (not a cached suffix, not a DDP wrapper): its names are the delta's
        self.mixer, self.criterion = mixing.make(recipe.data, num_classes, t.label_smoothing)
        self.keeper = Keeper(t.keep)
        self.ema: Optional[LearnedEma] = LearnedEma(model, t.ema_decay) if t.ema else None

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch as the loss sees it: mixed with soft targets, or as it came."""
        return self.mixer(x, y) if self.mixer is not None else (x, y)

    def stepped(self, step: int) -> None:
        """After optimizer step `step`."""
        if self.ema:
            self.ema.update(step)

    @contextlib.contextmanager
    def kept_values(self) -> Iterator[None]:
        """Inside, the model holds the values the run would keep (the average, when on): what is measured."""
        with self.ema.applied() if self.ema else contextlib.nullcontext():
            yield

    def offer(self, metrics: dict[str, Any]) -> None:
        """An epoch's measurements, inside kept_values(): the keeper copies the values when they are the best."""
        self.keeper.offer(self.model, metrics)

    def finish(self) -> Optional[dict[str, Any]]:
        """Put the kept values into the model; returns the kept epoch's metrics (None: the last epoch's)."""
        if self.ema:
            self.ema.apply()
        return self.keeper.restore(self.model)

    def state(self) -> dict[str, Any]:
        """Plain data for a checkpoint's train_state.json."""
        return self.keeper.state()

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint keeps for them (the average, the best epoch's values)."""
        return {**(self.ema.state() if self.ema else {}), **self.keeper.tensors}

    def load(self, state: Optional[dict[str, Any]], tensors: dict[str, torch.Tensor]) -> None:
        """Where a checkpoint left them."""
        self.keeper.load(state, tensors)
        if self.ema:
            self.ema.load(tensors)
