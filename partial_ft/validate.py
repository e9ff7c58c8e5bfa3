"""`validate(recipe)`: the checks that run once, before any data or model is loaded and before anything
is written, so a mistake is one `error:` line naming the recipe key, never a traceback after the run
folder exists: the recipe's sections, each validating itself with what this machine decides (timm names,
trackers, workers), then the output folder. What needs the model is tried as it is built
(models.try_forward, transforms.build)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from . import rundir
from .recipe import Recipe


def validate(recipe: Recipe, overwrite: bool = False, resume: bool = False) -> Optional[Path]:
    """Everything about a run that can be checked before any data or model is loaded, and without writing
    anything: the recipe (Recipe.validate, with what this machine decides), then the output folder
    (rundir.check_folder). Returns the checkpoint to resume from, if any."""
    recipe.validate(here=True)
    return rundir.check_folder(recipe, overwrite, resume)  # a bad or busy output path
