"""The exact linear probe against scikit-learn's LogisticRegression on synthetic features."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from partial_ft import probe


def blobs(seed: int, n: int, k: int = 5, d: int = 40, spread: float = 0.6):
    """Overlapping Gaussian classes (so that the L2 strength matters); the centers depend on `seed` only."""
    centers = np.random.default_rng(seed).normal(size=(k, d)) * spread
    rng = np.random.default_rng(seed + 1000 + n)
    y = rng.integers(0, k, n)
    return centers[y] + rng.normal(size=(n, d)), y


@pytest.mark.parametrize("C", [0.05, 0.5, 5.0])
def test_fixed_strength_solution_equals_sklearn(C):
    """strength = 1 / (C n): the same convex problem as sklearn's (unpenalised intercept), so the same
    minimiser, to solver tolerance."""
    from sklearn.linear_model import LogisticRegression

    x, y = blobs(0, 400)
    sk = LogisticRegression(C=C, max_iter=10000, tol=1e-10).fit(x, y)
    w, iterations = probe.solve(torch.tensor(x), torch.tensor(y), 5, 1 / (C * len(x)))
    assert iterations > 0
    assert np.abs(w[:, :-1].numpy() - sk.coef_).max() < 5e-4  # coefficients are O(1)
    assert np.abs(w[:, -1].numpy() - sk.intercept_).max() < 5e-4


@pytest.mark.parametrize("seed", [0, 1])
def test_chosen_strength_matches_sklearn_cross_validation_accuracy(seed):
    """Strength chosen by cross-validation on train, refit on all of train: held-out accuracy within 0.01 of
    LogisticRegressionCV (C by 5-fold cross-validation) on the same features."""
    from sklearn.linear_model import LogisticRegressionCV

    x, y = blobs(seed, 400)
    xt, yt = blobs(seed, 5000)
    result = probe.fit(torch.tensor(x, dtype=torch.float32), torch.tensor(y), 5, seed=seed)
    accuracy = ((xt @ result.weight.numpy().T + result.bias.numpy()).argmax(1) == yt).mean()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = LogisticRegressionCV(Cs=10, cv=5, max_iter=5000).fit(x, y).score(xt, yt)
    assert abs(accuracy - reference) <= 0.01, (accuracy, reference, result.strength)
    assert result.strength in result.cv_top1 and set(probe.STRENGTHS) < set(result.cv_top1)


def test_choice_uses_the_training_features_only_and_is_seeded():
    """The strength comes from the training features alone (same seed: same choice, same weights), and
    the solution is what the record says."""
    x, y = blobs(2, 300)
    a = probe.fit(torch.tensor(x), torch.tensor(y), 5, seed=3)
    b = probe.fit(torch.tensor(x), torch.tensor(y), 5, seed=3)
    assert a.strength == b.strength and torch.equal(a.weight, b.weight)
    assert a.weight.shape == (5, 40) and a.bias.shape == (5,)
    assert a.info()["solver"] == "exact" and a.info()["strength"] == a.strength


PROBE = {"strategy": {"name": "head", "norm_stats": "freeze"}, "data": {"augment": False}}


@pytest.mark.parametrize("solver,expected", [("auto", "exact"), ("exact", "exact"), ("loop", "loop")])
def test_cached_head_run_uses_the_solver_asked_for(tiny_recipe, solver, expected):
    """A head on cached features: auto and exact solve it (summary.json says so, with the chosen strength);
    loop trains it for epochs."""
    import json

    from conftest import run_cli

    recipe = tiny_recipe(f"probe_{solver}", **PROBE, train={"solver": solver, "max_steps": 2})
    p = run_cli("--recipe", str(recipe))
    assert p.returncode == 0, p.stderr[-2000:]
    run_dir = recipe.parent / "runs" / f"probe_{solver}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["solver"]["solver"] == expected
    if expected == "exact":
        assert summary["steps"] == 0 and summary["solver"]["strength"] > 0 and summary["solver"]["iterations"] > 0
        tried = len(summary["solver"]["cv_top1"])
        assert tried >= 10  # a decade grid, then the half-decades around the best
        assert f"exact solver: {tried} L2 strengths tried" in p.stdout
        assert f"{summary['solver']['iterations']} L-BFGS iterations" in p.stdout
        lines = p.stdout.splitlines()
        assert any(line.startswith("solved  loss ") for line in lines), p.stdout
        assert "epoch 1/1" not in p.stdout and " img/s" not in p.stdout
        assert lines[-1].endswith(f"solved in {summary['solver']['seconds']:.1f} s")
    else:
        assert summary["steps"] == 2 and "exact solver" not in p.stdout
        assert "epoch 1/1  step 2  loss " in p.stdout and p.stdout.rstrip().endswith(" img/s")
    assert (run_dir / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_exact_solver_refused_where_more_than_the_head_learns(tiny_recipe):
    from conftest import run_cli

    recipe = tiny_recipe("probe_bad", data={"augment": False}, train={"solver": "exact"})  # filters learn
    p = run_cli("--recipe", str(recipe))
    assert p.returncode == 2 and p.stderr.startswith("error: train.solver: exact needs only the classifier")
    assert not (recipe.parent / "runs" / "probe_bad").exists()


@pytest.mark.parametrize("labels,folds", [
    ([0] * 10 + [1] * 10, 5),       # plenty: 5 folds
    ([0] * 10 + [1] * 1, 5),        # a class with one image: it is held out in one fold only
    ([0] * 3 + [1] * 2, 3),         # no class has 5 images: as many folds as the largest class
    ([0, 1, 2], 0),                 # no class has two images: nothing to cross-validate
])
def test_folds_cover_every_image_once(labels, folds):
    y = np.array(labels)
    pairs = probe._folds(y, probe.FOLDS, seed=0)
    assert len(pairs) == folds
    if folds:
        held_out = np.concatenate([held for _, held in pairs])
        assert sorted(held_out) == list(range(len(y)))  # each image held out exactly once
        assert all(not set(fit) & set(held) for fit, held in pairs)
