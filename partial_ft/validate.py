"""`validate(recipe)`: the checks that run once, before any data or model is loaded and before anything
is written, so a mistake is one `error:` line naming the recipe key, never a traceback after the run
folder exists. The recipe's sections validate themselves (as they are read, and here again); here is what
needs the environment: trackers, timm names, the output folder. What needs the model is tried as it is
built (models.try_forward, loaders.transforms)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from torch import nn

from . import loaders, models, rundir, tracking
from .errors import UserError, did_you_mean, first_line
from .recipe import Recipe
from .sections import DataCfg, TrainCfg


def validate(recipe: Recipe, overwrite: bool = False, resume: bool = False) -> Optional[Path]:
    """Everything about a run that can be checked before any data or model is loaded, and without writing
    anything: the recipe's own values, the trackers, the model name, the optimizer and scheduler, and the
    output folder (rundir.check_folder). Returns the checkpoint to resume from, if any."""
    check_optimization(recipe.train)  # timm names, tried on a stand-in parameter
    check_workers(recipe.data)
    last = rundir.check_folder(recipe, overwrite, resume)  # a bad or busy output path
    models.check_name(recipe.model.name)
    recipe.validate()  # (done when it was read, too: a Recipe may also be built in code)
    tracking.check_installed(recipe.train.log_with)  # a tracker that is not installed
    return last


def check_optimization(t: TrainCfg) -> None:
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
