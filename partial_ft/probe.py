"""The exact linear probe (`train.solver: exact`): multinomial logistic regression on cached features,
solved to convergence instead of trained for a few epochs.

When only the classifier learns and the features before it are cached, training is a convex problem:

    minimise  mean cross-entropy(X W^T + b, y) + strength / 2 * ||W||^2      (b is not penalised)

solved here by full-batch L-BFGS (torch.optim.LBFGS with a strong-Wolfe line search) in float64. The
L2 strength is chosen as in CLIP's linear-probe protocol, by stratified, seeded K-fold cross-validation
on train (each candidate fitted on K-1 folds and scored on the held-out fold, accuracy then loss, summed
over the folds); the winner is refitted on all of train. The validation split is never looked at.
`strength` is sklearn's 1 / (C * n).

Why our own solver and not scikit-learn's `LogisticRegressionCV`: on the transfer task this torch L-BFGS
is about 17x faster, and it runs on the GPU where the cached features already are. scikit-learn stays the
reference the tests hold it to (tests/test_probe.py).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from accelerate.utils import broadcast, broadcast_object_list
from torch import nn

from . import cache, mixing
from .cache import Cached
from .cuts import PRE_LOGITS
from .errors import UserError
from .recipe import Recipe, loop_features

# candidate L2 strengths: 1e-6 .. 10, a decade apart, then the two half-decades around the best (CLIP's
# coarse-to-fine search); the scores of all are reported, so a choice at the edge is visible
STRENGTHS = tuple(float(10.0 ** e) for e in range(-6, 2))
FOLDS = 5  # every training image is held out once: a single 20% carve-out was too noisy a judge on small
# data (on the transfer task it chose 1e-3 at the edge of a flat optimum, 0.011 below scikit-learn's CV)
SEARCH_ITER = 150  # L-BFGS iterations per candidate fit (ranking candidates needs no more: 300 chose the same; final fit: 1000)
SMALL = 2**22  # feature values below which the CPU solve runs on one thread


@dataclass
class ProbeResult:
    """The fitted classifier (weight k x d, bias k, float64) and how it was chosen."""

    weight: torch.Tensor
    bias: torch.Tensor
    strength: float
    cv_top1: dict[float, float] = field(default_factory=dict)  # strength -> cross-validated accuracy
    iterations: int = 0  # L-BFGS iterations of the final fit
    seconds: float = 0.0
    train_loss: float = 0.0  # the final fit's mean cross-entropy on train (without the L2 term)

    def info(self) -> dict:
        """What summary.json records."""
        return {"solver": "exact", "strength": self.strength,
                "cv_top1": {f"{s:.3g}": round(a, 4) for s, a in self.cv_top1.items()},
                "iterations": self.iterations, "seconds": round(self.seconds, 3),
                "train_loss": round(self.train_loss, 6)}


def _objective(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, strength: float) -> torch.Tensor:
    logits = x @ w[:, :-1].T + w[:, -1]
    return nn.functional.cross_entropy(logits, y) + 0.5 * strength * w[:, :-1].pow(2).sum()


def solve(x: torch.Tensor, y: torch.Tensor, num_classes: int, strength: float,
          start: Optional[torch.Tensor] = None, max_iter: int = 1000, tol: float = 1e-8) -> tuple[torch.Tensor, int]:
    """The minimiser of the L2-regularised mean cross-entropy as one (k, d + 1) matrix [W | b], and the
    number of L-BFGS iterations. x: (n, d) float64, y: (n,) class ids."""
    w = torch.zeros(num_classes, x.shape[1] + 1, dtype=x.dtype, device=x.device) if start is None else start.clone()
    w.requires_grad_(True)
    optimizer = torch.optim.LBFGS([w], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _objective(x, y, w, strength)
        loss.backward()
        return loss

    optimizer.step(closure)
    iterations = optimizer.state[optimizer._params[0]].get("n_iter", 0)
    return w.detach(), int(iterations)


def _score(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[float, float]:
    logits = x @ w[:, :-1].T + w[:, -1]
    return (logits.argmax(1) == y).double().mean().item(), nn.functional.cross_entropy(logits, y).item()


def _middle_of_best(scores: dict[float, tuple[float, float]]) -> float:
    """The best cross-validated accuracy; when several strengths tie (small folds often classify
    perfectly over a wide range), the middle of the tied run around the lowest held-out loss: the loss
    alone would pick the weakest strength (the most confident) whenever the folds are separable."""
    ordered = sorted(scores)
    best = max(a for a, _ in scores.values())  # means over folds: ties are exact only when all agree
    anchor = ordered.index(min((s for s in ordered if scores[s][0] == best), key=lambda s: scores[s][1]))
    lo = hi = anchor
    while lo > 0 and scores[ordered[lo - 1]][0] == best:
        lo -= 1
    while hi < len(ordered) - 1 and scores[ordered[hi + 1]][0] == best:
        hi += 1
    return ordered[(lo + hi) // 2]


def fit(features: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int = 0,
        strengths: tuple[float, ...] = STRENGTHS, folds: int = FOLDS) -> ProbeResult:
    """Choose the L2 strength by stratified `folds`-fold cross-validation on these (training) features,
    shuffled with `seed` (fewer folds when no class has that many images), then refit on all of them. Runs on
    the features' device, in float64."""
    threads = torch.get_num_threads()
    if features.device.type == "cpu" and features.numel() < SMALL:
        torch.set_num_threads(1)  # small matrices: threads cost more than they give (10x on a busy CPU)
    try:
        return _fit(features, labels, num_classes, seed, strengths, folds)
    finally:
        torch.set_num_threads(threads)


def _folds(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (fit, held-out) index pairs; none when no class has two images. A class with fewer images
    than folds is held out in some folds only (sklearn warns of that; it is expected on small data)."""
    folds = min(folds, int(np.unique(y, return_counts=True)[1].max()))
    if folds < 2:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def _fit(features: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int, strengths: tuple[float, ...],
         folds: int) -> ProbeResult:
    start_time = time.perf_counter()
    x = features.reshape(len(features), -1).to(torch.float64)
    # centred features: the same problem (the bias is not penalised, so it absorbs the shift), but the
    # weight/bias coupling of non-negative post-ReLU features is gone and L-BFGS needs 3-4x fewer steps
    mean = x.mean(0)
    x = x - mean
    y = labels.to(device=x.device, dtype=torch.long)
    splits = _folds(y.cpu().numpy(), folds, seed) if len(strengths) > 1 else []
    splits = [tuple(torch.as_tensor(i, device=x.device) for i in split) for split in splits]
    scores: dict[float, tuple[float, float]] = {}

    def score(candidates: list[float]) -> None:
        found: dict[float, list[tuple[float, float]]] = {s: [] for s in candidates}
        for f, c in splits:
            w = None
            for strength in sorted(candidates, reverse=True):  # strong to weak: each warm-starts the next
                w, _ = solve(x[f], y[f], num_classes, strength, start=w, max_iter=SEARCH_ITER, tol=1e-6)
                found[strength].append(_score(x[c], y[c], w))
        scores.update({s: tuple(np.mean(v, axis=0)) for s, v in found.items()})

    if splits:  # else one candidate, or too few images per class to cross-validate: nothing to choose
        score(sorted(strengths))
        best = _middle_of_best(scores)
        score([best * 10 ** -0.5, best * 10 ** 0.5])
    chosen = _middle_of_best(scores) if scores else strengths[0]
    w, iterations = solve(x, y, num_classes, chosen)
    weight = w[:, :-1].contiguous()
    return ProbeResult(weight, w[:, -1] - weight @ mean, chosen,
                       {s: a for s, (a, _) in sorted(scores.items())}, iterations, time.perf_counter() - start_time,
                       _score(x, y, w)[1])


def choose(recipe: Recipe, model: nn.Module, deterministic: bool, input_size: tuple[int, ...],
           num_images: int) -> tuple[cache.Decision, str]:
    """Whether the fixed prefix's features are cached (cache.decide_cut; never when the recipe mixes images),
    and from that 'exact' or 'loop' for the recipe's `train.solver`: exact applies when only the classifier
    (a Linear with a bias) learns, on cached pre-logits features, and no recipe key acts on training steps
    (mixing, an average, a kept epoch, layer-wise decay). An `exact` that cannot apply is a UserError."""
    t = recipe.train
    decision = (cache.decide_cut(model, t.cache_features, deterministic, input_size, num_images)
                if not mixing.mixes(recipe.data) else cache.Decision(None, "not used: data.mixup / data.cutmix mix images"))
    cut, mode, steps = decision.cut, t.solver, loop_features(recipe)
    linear = cut is not None and isinstance(cut.suffix, nn.Linear) and cut.suffix.bias is not None
    applies = cut is not None and cut.name == PRE_LOGITS and linear
    if mode == "exact" and not applies:
        why = ("the features are not cached (see train.cache_features)" if cut is None else
               "more than a linear classifier learns" if cut.name != PRE_LOGITS else "the classifier is not a Linear with a bias")
        raise UserError(f"train.solver: exact needs only the classifier to learn, on cached features; here {why} "
                        "(set train.solver: loop or auto)")
    return decision, "exact" if mode != "loop" and applies and not steps else "loop"


def describe(result: ProbeResult) -> str:
    """What the solver did, in one line: the strengths it tried, the cross-validated choice, the final fit."""
    tried = sorted(result.cv_top1)
    span = f" ({tried[0]:.3g} to {tried[-1]:.3g})" if tried else ""
    cv = result.cv_top1.get(result.strength)
    chosen = f", cross-validated top-1 {cv:.4f}" if cv is not None else ""
    return (f"exact solver: {len(tried)} L2 strengths tried{span} by {FOLDS}-fold cross-validation on train; "
            f"chose {result.strength:.3g}{chosen}; refit on all of train in {result.iterations} L-BFGS "
            f"iterations (train loss {result.train_loss:.4f}); {result.seconds:.1f} s in all")


def train_exact(cached: Cached, num_classes: int, seed: int, acc: Any) -> dict:
    """Solve the classifier on the whole cached training set and write it into the model. The main process
    solves and broadcasts (every process holds the whole cache; one solve, one answer). Returns the record."""
    head = cached.suffix
    weight = torch.zeros_like(head.weight, device=acc.device)
    bias = torch.zeros_like(head.bias, device=acc.device)
    info = [None]
    if acc.is_main_process:
        ds = cached.train_loader.dataset
        ok = ds.ok
        device = acc.device if acc.device.type == "cuda" else torch.device("cpu")
        result = fit(ds.features[ok].to(device), ds.labels[ok].to(device), num_classes, seed=seed)
        weight.copy_(result.weight.to(weight))
        bias.copy_(result.bias.to(bias))
        info = [result.info()]
        acc.print(describe(result), flush=True)
    if acc.num_processes > 1:
        weight, bias = broadcast(weight), broadcast(bias)
        info = broadcast_object_list(info)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return info[0]
