"""What a sweep runs: its configurations (strategies sized by the budget, with their random controls, per
dataset and model) and each run's job (folder, raw recipe), tuning runs under <out>/tune/."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .. import recipe as recipes
from .. import yamlsafe
from ..errors import UserError
from . import budget, grid as grids
from .jobs import Job, make_raw, preflight
from .search import Range
from .study import fingerprint


@dataclass
class Plan:
    """A validated sweep: the grid, the base recipe (raw), the overrides, the folder, the configurations."""

    grid: grids.Grid
    base_path: Path
    base: dict
    cli: list[str]
    out: Path
    configs: list[grids.Config]
    finals: bool = True  # False: tuning only (no final runs)

    @property
    def overrides(self) -> list[str]:
        return [*self.grid.overrides, *self.cli]

    @property
    def tuned(self) -> list[str]:
        return list(self.grid.tune)

    def digest(self) -> str:
        """What decides every run (not the folder, not how many processes run them)."""
        grid = dataclasses.asdict(self.grid)
        if not any(grid["strategy_overrides"]):  # as before strategies had their own: older studies still match
            del grid["strategy_overrides"]
        if not self.finals and self.grid.search.sampler != "grid":  # tuning alone (`tune`): more draws extend it
            del grid["search"]["trials"]
        return fingerprint(grid, self.base, self.cli)

    def tune_job(self, index: int, candidate: dict[str, Any]) -> Job:
        """Configuration `index` trained with `candidate` (first seed) on train minus the carve-out."""
        config, seed = self.configs[index], self.grid.seeds[0]
        run_dir = self.out / "tune" / config.folder() / \
            f"{grids.slug(config.label)}_{grids.candidate_id(candidate)}_seed{seed}"
        raw = make_raw(self.base, [*self.overrides, *config.overrides(), *grids.candidate_overrides(candidate)],
                       config.spec, seed, run_dir, self.grid.tune_fraction)
        return Job(run_dir, raw, f"tune {config.where()} {candidate}", extra={"candidate": candidate})

    def final_job(self, index: int, seed: int, candidate: Optional[dict[str, Any]] = None) -> Job:
        """Configuration `index` with the chosen `candidate`, on all of train, for `seed`."""
        config, candidate = self.configs[index], candidate or {}
        stem = grids.slug(config.label) + (f"_{grids.candidate_id(candidate)}" if candidate else "")
        run_dir = self.out / config.folder() / f"{stem}_seed{seed}"
        raw = make_raw(self.base, [*self.overrides, *config.overrides(), *grids.candidate_overrides(candidate)],
                       config.spec, seed, run_dir)
        dataset = raw.get("data", {}).get("dataset", recipes.DataCfg().dataset)
        return Job(run_dir, raw, f"{config.where()} seed {seed}", extra={"dataset": dataset})

    def check(self) -> None:
        """Every run's recipe validates before anything runs (a range: both its ends)."""
        tuning = [self.tune_job(i, c) for i in range(len(self.configs)) for c in _probes(self.grid.tune)] \
            if self.grid.tune else []
        preflight(tuning + [self.final_job(i, self.grid.seeds[0]) for i in range(len(self.configs))])


def _probes(tune: dict[str, list | Range]) -> list[dict[str, Any]]:
    """Candidates to validate: every listed one; a range's low and high."""
    return grids.candidates({k: [v.low, v.high] if isinstance(v, Range) else v for k, v in tune.items()})


def load(recipe: str | Path, grid: str | Path | grids.Grid, out: str | Path, cli: list[str],
         finals: bool = True) -> Plan:
    """Read and check the grid (a file, or a Grid) and base recipe; size the configurations (budget, controls)."""
    grid = grid if isinstance(grid, grids.Grid) else grids.load(grid)
    base_path = Path(recipe)
    recipes.load(base_path)  # the base recipe itself is valid
    base = yamlsafe.load_file(base_path, "recipe") or {}
    if not isinstance(base, dict):
        raise UserError(f"{base_path}: a recipe must be a mapping")
    plan = Plan(grid, base_path, base, list(cli), Path(out), [], finals)
    plan.configs = _configs(grid, base_path, cli)
    plan.check()
    return plan


def _configs(grid: grids.Grid, base_path: Path, cli: list[str]) -> list[grids.Config]:
    """The configurations, sized by the budget and followed by their random controls (per dataset and model)."""
    configs = grids.configurations(grid)
    if grid.budget is None and grid.controls is None:
        return configs
    out = []
    for dataset in grid.datasets or [None]:
        for model in grid.models or [None]:
            axis = grids.Config({}, dataset, model)
            recipe = recipes.load(base_path, [*grid.overrides, *axis.overrides(), *cli])
            specs = budget.match_all(recipe, grid.strategies, grid.budget) if grid.budget else grid.strategies
            pairs = budget.controls(recipe, specs, grid.controls) if grid.controls else [(s, None) for s in specs]
            for (spec, control), own in zip(pairs, grid.own()):
                config = grids.Config(spec, dataset, model, own=list(own))
                out.append(config)
                if control is not None:  # trained as the strategy it matches is (its own overrides too)
                    out.append(grids.Config(control, dataset, model, control_for=config.label, own=list(own)))
    return out
