"""What strategies may need beyond the model and their options: the seed, fresh random weights, and
scoring passes over training gradients (drawn once per batch count, shared by a list of strategies)."""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from ..errors import UserError
from .scoring import Gradients, GradientStats, gradient_stats

DEFAULT_BATCHES = 8  # a scoring pass's batches when the strategy's `batches` is not set


@dataclass
class Context:
    """The seed, a factory for a fresh random init, and a source of training gradients (None where there is
    no data, e.g. when a delta is loaded)."""

    seed: int = 0
    init_model: Optional[Callable[[], nn.Module]] = None
    gradients: Optional[Gradients] = None
    scoring_seconds: float = 0.0  # time spent in scoring passes
    _fresh: dict[int, nn.Module] = field(default_factory=dict)
    _stats: dict[int, GradientStats] = field(default_factory=dict)

    def check_batches(self, batches: Optional[int], who: str) -> int:
        """How many batches a scoring pass draws: `batches` (it cannot be more than the training data
        has), or by default DEFAULT_BATCHES or every batch of smaller data."""
        available = self.gradients.available if self.gradients is not None else DEFAULT_BATCHES
        if batches is None:
            return min(DEFAULT_BATCHES, available)
        if batches > available:
            raise UserError(f"{who}: batches is {batches}, but the training data has only {available} batches; "
                            "lower it")
        return batches

    def gradient_stats(self, model: nn.Module, batches: Optional[int], who: str) -> GradientStats:
        """Σ g² and Σ |g| per parameter over `batches` training batches (summed across processes); one
        scoring pass per batch count, shared by every strategy of a list that asks for it."""
        if self.gradients is None:
            raise UserError(f"{who} chooses from training gradients, but none were given "
                            "(apply_strategy(..., gradients=...); the training run passes them)")
        batches = self.check_batches(batches, who)
        if batches not in self._stats:
            self._stats[batches] = gradient_stats(model, self.gradients, batches)
            self.scoring_seconds += self._stats[batches].seconds
        return self._stats[batches]

    def random_weight(self, module_name: str, module: nn.Module, seed: Optional[int] = None) -> torch.Tensor:
        """The weight `module` would have at random init: from a fresh model built the same way
        (the architecture's own init), else from the layer's reset_parameters(); seeded either way."""
        seed = self.seed if seed is None else seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.init_model is not None:
                if seed not in self._fresh:
                    self._fresh[seed] = self.init_model()
                return self._fresh[seed].get_submodule(module_name).weight.detach()
            clone = copy.deepcopy(module)
            clone.reset_parameters()
            return clone.weight.detach()
