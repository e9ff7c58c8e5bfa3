"""Decisions every process of a multi-process run must take together (a stop, a skipped batch): each
process contributes what it sees, all act on the reduced answer, so no process waits forever in a
collective that the others skipped."""
from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn

from .signals import StopFlag


def lone_image(acc: Accelerator, model: nn.Module, x: torch.Tensor) -> bool:
    """A batch of one image on some process (a dataset that leaves a last batch of one) cannot train a
    BatchNorm in training mode (one value per channel): every process drops that batch together."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules()):
        return False
    negative = torch.tensor([-x.shape[0]], device=x.device)  # Accelerate reduces by sum or max, not min
    if acc.num_processes > 1:
        negative = acc.reduce(negative, reduction="max")
    return -int(negative.item()) < 2


def all_finite(acc: Accelerator, loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process: all must stop (or skip) together."""
    bad = (~torch.isfinite(loss.detach())).reshape(1).to(torch.int32)
    if acc.num_processes > 1:
        bad = acc.reduce(bad, reduction="sum")
    return int(bad.item()) == 0


def stop_requested(acc: Accelerator, stop: StopFlag) -> bool:
    """Whether any process got SIGTERM / Ctrl-C: all processes must stop (and checkpoint) together."""
    if acc.num_processes == 1:
        return stop.signum is not None
    flag = torch.tensor([stop.signum or 0], device=acc.device)
    signum = int(acc.reduce(flag, reduction="max").item())
    stop.signum = stop.signum or (signum or None)
    return signum != 0


def from_main(acc: Accelerator, value: Any) -> Any:
    """The main process's `value` (plain data), on every process: what it alone decided."""
    return broadcast_object_list([value])[0] if acc.num_processes > 1 else value
