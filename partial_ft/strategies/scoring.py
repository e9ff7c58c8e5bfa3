"""The scoring pass: gradient statistics of every parameter over a few training batches, for strategies
that choose what to learn from the gradient signal (`auto`, `block` with `index: auto`).

Strategies know nothing of the training loop: the loop hands them a `Gradients`, a way to draw this
process's gradients batch by batch with the model as training will see it (new classifier included, no
optimizer step), and a way to sum tensors across processes so every process chooses the same.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class Gradients:
    """A source of training gradients, built by the training loop.

    `draw(model, n)` runs forward and backward over this process's share of the first `n` training
    batches, one item per batch: after each item, every parameter's `.grad` holds that batch's gradient.
    `available` is how many training batches there are (all processes together); `reduce` sums a tensor
    across processes (identity in a single process).
    """

    draw: Callable[[nn.Module, int], Iterable[Any]]
    available: int
    reduce: Callable[[torch.Tensor], torch.Tensor] = _same


@dataclass
class GradientStats:
    """Per parameter (by name), summed over the batches of every process: Σ g² (`sq`) and Σ |g| (`abs`);
    `batches` counts the batches of every process, `seconds` is the pass's wall time."""

    sq: dict[str, torch.Tensor]
    abs: dict[str, torch.Tensor]
    batches: int
    seconds: float


def gradient_stats(model: nn.Module, gradients: Gradients, batches: int) -> GradientStats:
    """Draw `batches` training batches' gradients and sum their statistics per parameter (across processes
    too). The model comes back as it was: same values, running statistics, train/eval mode, requires_grad,
    no .grad; the CPU random generator is left as it was, so training draws the same numbers after it."""
    start = time.perf_counter()
    params = dict(model.named_parameters())
    requires = {n: p.requires_grad for n, p in params.items()}
    # a train-mode forward updates BatchNorm running statistics: the fixed part must not change
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    mode = model.training
    sq: dict[str, torch.Tensor] = {}
    ab: dict[str, torch.Tensor] = {}
    count = 0
    try:
        with torch.random.fork_rng(devices=[]):
            for p in params.values():
                p.requires_grad_(True)
            model.train()
            model.zero_grad(set_to_none=True)
            for _ in gradients.draw(model, batches):
                with torch.no_grad():
                    for n, p in params.items():
                        if p.grad is None:
                            continue
                        g = p.grad.detach().float()
                        sq[n] = sq[n].add_(g.square()) if n in sq else g.square()
                        ab[n] = ab[n].add_(g.abs()) if n in ab else g.abs()
                model.zero_grad(set_to_none=True)
                count += 1
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in buffers:
                    b.copy_(buffers[n])
        for n, p in params.items():
            p.requires_grad_(requires[n])
        model.train(mode)
    sq, ab, count = _summed(params, sq, ab, count, gradients.reduce)
    return GradientStats(sq, ab, count, time.perf_counter() - start)


def _summed(params: dict[str, nn.Parameter], sq: dict[str, torch.Tensor], ab: dict[str, torch.Tensor], count: int,
            reduce: Callable[[torch.Tensor], torch.Tensor]) -> tuple[dict, dict, int]:
    """Every process's sums added up in one collective (one flat tensor), returned on the CPU. Parameters
    without a gradient on this process (unused, or no batch at all) count zero, so every process reduces
    the same shapes."""
    names = list(params)
    # where the gradients were (the source may have moved the model back since): collectives run there
    device = next(iter(sq.values())).device if sq else torch.device("cpu")
    parts = [sq.get(n, torch.zeros(params[n].shape, device=device)).reshape(-1) for n in names]
    parts += [ab.get(n, torch.zeros(params[n].shape, device=device)).reshape(-1) for n in names]
    flat = torch.cat([p.to(device, torch.float32) for p in parts] + [torch.tensor([float(count)], device=device)])
    flat = reduce(flat).cpu()
    out_sq, out_ab, offset = {}, {}, 0
    for target in (out_sq, out_ab):
        for n in names:
            size = params[n].numel()
            target[n] = flat[offset:offset + size].reshape(params[n].shape)
            offset += size
    return out_sq, out_ab, int(round(flat[-1].item()))
