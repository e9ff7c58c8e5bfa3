"""What a model learns: the tensors that training changes and a delta stores (parameters that require grad,
learned slices and whole tensors alike, and the running statistics of BatchNorm layers that update them).
The delta saves them, the EMA averages them, `train.keep: best` copies them."""
from __future__ import annotations

import torch
from torch import nn

from .normstats import updates_norm_stats


def learned_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own tensors that training changes, live (by reference), by their state-dict names."""
    state = {name: p for name, p in model.named_parameters() if p.requires_grad}
    for prefix, module in model.named_modules():
        if updates_norm_stats(module):
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                if getattr(module, name, None) is not None:
                    state[f"{prefix}.{name}" if prefix else name] = getattr(module, name)
    return state
