"""Checks that run before anything is written: recipe values that timm would reject later are tried
up front, so a mistake is one `error:` line naming the recipe key, never a traceback after the run
folder exists."""
from __future__ import annotations

from typing import Any

import torch
from PIL import Image as PILImage
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from torch import nn

from . import loaders
from .errors import UserError, did_you_mean, first_line
from .recipe import DataCfg


def check_optimization(t: Any) -> None:
    """train.opt and train.sched are timm names: try them on a stand-in parameter, so a typo (or a
    scheduler that cannot step per update, like plateau) fails before any work."""
    try:
        opt = create_optimizer_v2(nn.Linear(1, 1), opt=t.opt, lr=t.lr, weight_decay=t.weight_decay,
                                  momentum=t.momentum)
    except Exception as e:
        raise UserError(f"train.opt '{t.opt}': {first_line(e)}{did_you_mean(t.opt, list_optimizers())}") from None
    try:
        create_scheduler_v2(opt, sched=t.sched, num_epochs=max(t.epochs, 2), warmup_epochs=t.warmup_epochs,
                            min_lr=t.min_lr, step_on_epochs=False, updates_per_epoch=1)
    except Exception as e:
        raise UserError(f"train.sched '{t.sched}': {first_line(e)}") from None


def check_workers(cfg: DataCfg) -> None:
    """data.num_workers within what this machine can start (loaders.max_workers: a few per CPU)."""
    if cfg.num_workers > loaders.max_workers():
        raise UserError(f"data.num_workers {cfg.num_workers:,} is more than this machine can use: at most "
                        f"{loaders.max_workers()} ({loaders.WORKERS_PER_CPU} per CPU it may use)")


def build_transforms(cfg: DataCfg, data_config: dict) -> tuple[Any, Any, bool]:
    """timm's train and eval transforms for the recipe, tried on a small image so that a value timm or
    torchvision refuses (an auto-augment policy, a size) is an error naming the data keys, now."""
    try:
        train_tf, eval_tf, deterministic = loaders.transforms(cfg, data_config)
        image = PILImage.new("RGB", (max(8, data_config["input_size"][-1] // 2),) * 2)
        for tf in {id(train_tf): train_tf, id(eval_tf): eval_tf}.values():
            tf(image)
    except UserError:
        raise
    except Exception as e:
        keys = "data.input_size / crop_pct / interpolation / mean / std / auto_augment / scale / ratio / color_jitter"
        raise UserError(f"the image transforms cannot be built from the recipe ({keys}): {first_line(e)}") from None
    return train_tf, eval_tf, deterministic


def probe_forward(model: nn.Module, name: str, input_size: tuple[int, ...]) -> None:
    """One forward of a tiny batch at the data's input size, before anything is written: a size the
    model cannot take (a ViT whose patch size does not divide it, a too small image) is one error line."""
    x = torch.zeros(2, *input_size)
    training = model.training
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()
            model(x)
    except Exception as e:
        raise UserError(f"model '{name}' cannot run on data.input_size {list(input_size)}: {first_line(e)}") from None
    finally:
        model.train(training)
