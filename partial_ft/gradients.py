"""The training run's side of a scoring pass: a `Gradients` source that draws training batches and runs
forward and backward with the model as training will see it (on the accelerator, under its mixed
precision, with the run's loss), without an optimizer step. Strategies that choose what to learn from the
gradient signal get it through apply_strategy and know nothing else of the training loop.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from . import loaders, signals
from .strategies import Gradients


def for_training(dataset: torch.utils.data.Dataset, batch_size: int, num_workers: int, accelerator: Any,
                 criterion: nn.Module, seed: int, channels_last: bool) -> Gradients:
    """Gradients over the first batches of a seeded shuffle of the training `dataset` (a loader of its own,
    so the training loader's order is untouched). Process r of P takes batches r, r + P, ...; their
    statistics are summed across processes by `accelerator.reduce`. A SIGTERM / Ctrl-C stops the pass
    within a batch (inside signals.stop_on_signals)."""
    acc = accelerator

    def draw(model: nn.Module, n: int) -> Iterator[int]:
        """Forward and backward over this process's share of the first `n` batches, one yield per batch."""
        source = loaders.loader(dataset, batch_size, True, num_workers, seed, acc.device.type == "cuda")
        home, device = next(model.parameters()).device, acc.device
        acc.print(f"scoring pass: gradients of {n} training batches", flush=True)
        model.to(device)
        # dropout and the like draw from the generators: training must see the numbers it would without a pass
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            try:
                for i, (x, y, _bad) in enumerate(source):
                    if i >= n:
                        break
                    signals.raise_if_stopped("the scoring pass")
                    # another process's share; every image unreadable; or a lone image (train-mode BatchNorm needs two)
                    if i % acc.num_processes != acc.process_index or x is None or x.shape[0] < 2:
                        continue
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    if channels_last and x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with acc.autocast():
                        loss = criterion(model(x), y)
                    loss.backward()
                    yield i
                    signals.raise_if_stopped("the scoring pass")  # before waiting for the next batch
            finally:
                loaders.shutdown_workers(source)
                model.to(home)  # strategies split weights where the model was built

    def reduce(t: torch.Tensor) -> torch.Tensor:
        return acc.reduce(t.to(acc.device), reduction="sum")

    available = math.ceil(len(dataset) / batch_size)
    if acc.num_processes == 1:
        return Gradients(draw, available=available)
    return Gradients(draw, available=available, reduce=reduce)

