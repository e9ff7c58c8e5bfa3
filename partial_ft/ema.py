"""`train.ema`: an exponential moving average of what learns, through timm's ModelEmaV3.

Only the learned tensors are averaged (the delta's tensors: learned parameters and slices, and the
BatchNorm statistics that training updates), so the average costs memory in proportion to what learns,
and fixed weights are never copied nor touched. With the average on, each epoch is evaluated with the
averaged values swapped in, and they are what the run saves as its delta.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from timm.utils import ModelEmaV3
from torch import nn

from .learned import learned_tensors


class _Tensors(nn.Module):
    """The learned tensors of a model, held by reference in a module, which is what ModelEmaV3 averages
    (its state_dict: the parameters, then the statistics buffers)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.params = nn.ParameterList([t for t in tensors.values() if isinstance(t, nn.Parameter)])
        for i, t in enumerate(t for t in tensors.values() if not isinstance(t, nn.Parameter)):
            self.register_buffer(f"stat{i}", t)


class LearnedEma:
    """timm's ModelEmaV3 over a model's learned tensors. Build it after the model reached its device
    (Accelerate's prepare): it holds references to the very tensors the optimizer and BatchNorm update."""

    def __init__(self, model: nn.Module, decay: float):
        self.live = _Tensors(learned_tensors(model))
        self.ema = ModelEmaV3(self.live, decay=decay)

    def update(self, step: int) -> None:
        """Average in the current values after optimizer step `step` (the first step copies them, as
        ModelEmaV3 does: an average of nothing is no starting point)."""
        self.ema.update(self.live, step=step)

    def _swap(self) -> None:
        with torch.no_grad():
            for live, avg in zip(self.live.state_dict(keep_vars=True).values(),
                                 self.ema.module.state_dict(keep_vars=True).values()):
                held = live.detach().clone()
                live.detach().copy_(avg)
                avg.detach().copy_(held)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the averaged values inside the block, its own again after it."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def apply(self) -> None:
        """Copy the averaged values into the model for good (the end of training)."""
        with torch.no_grad():
            for live, avg in zip(self.live.state_dict(keep_vars=True).values(),
                                 self.ema.module.state_dict(keep_vars=True).values()):
                live.detach().copy_(avg)

    def state(self) -> dict[str, torch.Tensor]:
        """The averaged values, for a checkpoint (CPU copies)."""
        return {f"ema.{k}": v.detach().cpu().contiguous().clone() for k, v in self.ema.module.state_dict().items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the averaged values a checkpoint saved."""
        own = self.ema.module.state_dict(keep_vars=True)
        with torch.no_grad():
            for k, v in own.items():
                v.detach().copy_(state[f"ema.{k}"])
