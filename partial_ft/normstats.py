"""BatchNorm statistics kept fixed: the same "never moves" promise for the buffers training would update
(`norm_stats: freeze`, and a cached prefix's norm layers)."""
from __future__ import annotations

from torch import nn


class FrozenStats:
    """Mixin for norm layers whose running statistics stay fixed: always in eval mode, as timm's
    freeze helpers do, while their affine parameters may still learn."""

    def train(self, mode: bool = True):
        super().train(mode)
        self.training = False
        return self


_FROZEN: dict[type, type] = {}


def updates_norm_stats(module: nn.Module) -> bool:
    """A BatchNorm whose running statistics training updates (freeze_norm_stats keeps them fixed)."""
    return (isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, FrozenStats)
            and module.track_running_stats and module.running_mean is not None)


def freeze_norm_stats(model: nn.Module) -> int:
    """Keep every BatchNorm's running statistics fixed (eval mode for good); returns how many."""
    count = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, FrozenStats):
            cls = type(m)
            _FROZEN.setdefault(cls, type(f"FrozenStats{cls.__name__}", (FrozenStats, cls), {}))
            m.__class__ = _FROZEN[cls]
            m.train(m.training)
            count += 1
    return count
