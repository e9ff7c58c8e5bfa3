"""`data.mixup` / `data.cutmix` / `data.mixup_prob`: timm's Mixup on training batches, with its soft
targets and SoftTargetCrossEntropy. Images are mixed, so it needs the loop on images (never cached
features, nor the exact solver)."""
from __future__ import annotations

from typing import Optional

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from .sections import DataCfg


def mixes(cfg: DataCfg) -> bool:
    """Whether the recipe mixes images (a mixup or cutmix alpha above 0, applied with some probability)."""
    return (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.mixup_prob > 0


class Mixer:
    """timm's Mixup for a batch of any size: timm pairs each image with the batch reversed and wants an
    even count, so an odd batch (the epoch's last, a process's share) mixes all but its last image,
    which keeps its own label (smoothed as the others)."""

    def __init__(self, cfg: DataCfg, num_classes: int, label_smoothing: float):
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                           label_smoothing=label_smoothing, num_classes=num_classes)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        even = len(x) - len(x) % 2
        if even == len(x):
            return self.mixup(x, y)
        alone = mixup_target(y[even:], self.num_classes, 1.0, self.label_smoothing)
        if even == 0:
            return x, alone
        mixed, target = self.mixup(x[:even].clone(), y[:even])
        return torch.cat([mixed, x[even:]]), torch.cat([target, alone])


def make(cfg: DataCfg, num_classes: int, label_smoothing: float) -> tuple[Optional[Mixer], nn.Module]:
    """(the batch mixer or None, the training loss): soft-target cross-entropy when mixing (the smoothing
    is in the targets), else cross-entropy with `label_smoothing`."""
    if not mixes(cfg):
        return None, nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    return Mixer(cfg, num_classes, label_smoothing), SoftTargetCrossEntropy()
