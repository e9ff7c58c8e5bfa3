"""How a configuration's tuning searches: the `tune:` candidates (lists or ranges) and the `search:` section,
validated, and the Optuna sampler and pruner they name.

    tune: {train.lr: [0.001, 0.01, 0.1]}                      # candidates: the grid sampler runs each once
    tune: {train.lr: {low: 1e-4, high: 0.3, log: true}}       # a range: TPE (or random) draws `trials` values
    search: {trials: 8, sampler: tpe, pruner: halving, min_epochs: 1, seed: 0}

`sampler`: grid (every candidate once, in the order written; the default when every key lists its values),
tpe (the default with a range), random, or qmc (Optuna's QMCSampler: a scrambled Sobol sequence, which
spreads even a few trials across the range, where a few random or TPE-startup draws may cluster).
`pruner`: none (every candidate trains to its end, the default), halving (Optuna's SuccessiveHalvingPruner)
or hyperband; both judge a candidate by its carve-out top-1 after each epoch, from `min_epochs` on. `seed`
seeds the sampler, so a rerun draws the same values.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import optuna

from ..errors import UserError, did_you_mean

SEARCH_KEYS = ("trials", "sampler", "pruner", "min_epochs", "seed")
RANGE_KEYS = ("low", "high", "log")
SAMPLERS = ("grid", "tpe", "random", "qmc")
PRUNERS = ("none", "halving", "hyperband")
DEFAULT_TRIALS = 10  # draws from a range when `trials` is not given


@dataclass(frozen=True)
class Range:
    """A tuned key's continuous range; `log` samples it on a log scale (both bounds > 0). Integer bounds
    without `log` draw integers."""

    low: float
    high: float
    log: bool = False

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if isinstance(self.low, int) and isinstance(self.high, int) and not self.log:
            return optuna.distributions.IntDistribution(self.low, self.high)
        return optuna.distributions.FloatDistribution(float(self.low), float(self.high), log=self.log)


@dataclass(frozen=True)
class Search:
    """A validated `search:` section (trials is resolved: the grid's candidate count for `grid`)."""

    trials: int = 1
    sampler: str = "grid"
    pruner: str = "none"
    min_epochs: int = 1
    seed: int = 0

    def make_sampler(self, number: Optional[int] = None) -> optuna.samplers.BaseSampler:
        """The sampler for ranges and random draws (grid candidates are enqueued as fixed trials). With
        `number`, seeded for that trial of the study: a trial's draw then depends on the seed, its number
        and the trials before it, not on which process draws it, nor on how many it drew before (one
        sampler per process would give each worker, and each later call extending a study, the same
        first draws: the same values trained twice)."""
        seed = self.seed if number is None else int(np.random.SeedSequence([self.seed, number]).generate_state(1)[0])
        if self.sampler == "qmc":  # one scrambled Sobol sequence per study (the study counts the points drawn);
            # its first trial, which fixes the search space, is a random draw seeded by its number
            with warnings.catch_warnings():  # "experimental" since Optuna 3.0; said once per trial otherwise
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=self.seed,
                                                  independent_sampler=optuna.samplers.RandomSampler(seed=seed),
                                                  warn_independent_sampling=False)
        if self.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        if self.pruner == "halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=self.min_epochs)
        if self.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=self.min_epochs)
        return optuna.pruners.NopPruner()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_range(key: str, node: dict) -> Range:
    """`{low, high, log}`: low < high, finite numbers, both > 0 with log."""
    for k in node:
        if k not in RANGE_KEYS:
            raise UserError(f"tune: '{key}': unknown range key '{k}'{did_you_mean(k, RANGE_KEYS)}")
    low, high, log = node.get("low"), node.get("high"), node.get("log", False)
    if not _number(low) or not _number(high):
        raise UserError(f"tune: '{key}': a range needs numbers low and high, got low={low!r}, high={high!r}")
    if not isinstance(log, bool):
        raise UserError(f"tune: '{key}': log must be true or false, got {log!r}")
    if low >= high:
        raise UserError(f"tune: '{key}': low must be below high, got low={low}, high={high}")
    if log and low <= 0:
        raise UserError(f"tune: '{key}': a log range needs low > 0, got low={low}")
    return Range(low, high, log)


def parse_tune(tune: dict) -> dict[str, list | Range]:
    """Each tuned key: a non-empty list of candidates, or a range."""
    out: dict[str, list | Range] = {}
    for key, node in tune.items():
        if isinstance(node, dict):
            out[key] = parse_range(key, node)
        elif isinstance(node, list) and node:
            out[key] = list(node)
        else:
            raise UserError(f"tune: '{key}' must list its candidate values or be a range {{low, high, log}}")
    return out


def parse_search(node: Optional[dict], tune: dict[str, list | Range]) -> Search:
    """The `search:` section, checked against `tune` (grid needs lists; trials >= 1)."""
    node = {} if node is None else node
    if not isinstance(node, dict):
        raise UserError(f"'search' must be a mapping with keys {list(SEARCH_KEYS)}, got {node!r}")
    for k in node:
        if k not in SEARCH_KEYS:
            raise UserError(f"search: unknown key '{k}'{did_you_mean(k, SEARCH_KEYS)}")
    ranged = [k for k, v in tune.items() if isinstance(v, Range)]
    sampler = node.get("sampler", "tpe" if ranged else "grid")
    pruner = node.get("pruner", "none")
    if sampler not in SAMPLERS:
        raise UserError(f"search: unknown sampler {sampler!r}{did_you_mean(sampler, SAMPLERS)}; one of {list(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise UserError(f"search: unknown pruner {pruner!r}{did_you_mean(pruner, PRUNERS)}; one of {list(PRUNERS)}")
    for k in ("trials", "min_epochs", "seed"):
        v = node.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < (0 if k == "seed" else 1)):
            raise UserError(f"search: {k} must be an integer >= {0 if k == 'seed' else 1}, got {v!r}")
    count = math.prod(len(v) for v in tune.values() if isinstance(v, list))
    if sampler == "grid":
        if ranged:
            raise UserError(f"search: sampler grid needs listed candidates, not a range ({', '.join(ranged)}); "
                            "use sampler tpe or random")
        if node.get("trials") not in (None, count):
            raise UserError(f"search: sampler grid runs each of the {count} candidates once; leave trials out "
                            f"or set it to {count}")
    trials = node.get("trials") or (count if sampler == "grid" or not ranged else DEFAULT_TRIALS)
    return Search(trials, sampler, pruner, node.get("min_epochs", 1), node.get("seed", 0))
