"""Ensemble uncertainty and sparsification / AUSE against hand computations."""

import math

import numpy as np
import pytest
import torch

from ensemble_mde.uncertainty import SparsificationAccumulator, ause, ensemble_sigma, pixel_errors, sparsification_curve


def test_ensemble_sigma_is_the_weighted_spread_hand_computed():
    depths = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    # mean: D = 2, sigma = sqrt(0.5 * 1 + 0.5 * 1) = 1
    assert float(ensemble_sigma(depths)) == pytest.approx(1.0)
    # weights 0.25 / 0.75: D = 2.5, sigma = sqrt(0.25 * 2.25 + 0.75 * 0.25) = sqrt(0.75)
    weights = torch.tensor([0.25, 0.75]).view(1, 2, 1, 1)
    assert float(ensemble_sigma(depths, weights)) == pytest.approx(math.sqrt(0.75))
    assert float(ensemble_sigma(torch.full((1, 3, 1, 1), 4.0))) == 0.0   # agreeing bases: no spread


def test_curve_and_ause_hand_computed():
    """Four pixels, two intervals: keep all, then the two least uncertain, then nothing."""
    gt = np.array([1.0, 2.0, 4.0, 5.0])
    pred = np.array([2.0, 2.0, 4.0, 2.0])            # errors 1, 0, 0, 3
    sigma = np.array([0.9, 0.1, 0.2, 0.5])           # removes pixel 0 then pixel 3 first
    errors = pixel_errors(pred, gt, "rmse")
    curve = sparsification_curve(errors, sigma, "rmse", intervals=2)
    oracle = sparsification_curve(errors, errors, "rmse", intervals=2)
    np.testing.assert_allclose(curve, [math.sqrt(10 / 4), 0.0, 0.0])      # pixels 1, 2 left: error 0
    np.testing.assert_allclose(oracle, [math.sqrt(10 / 4), 0.0, 0.0])
    assert ause(curve, oracle) == pytest.approx(0.0)
    worse = sparsification_curve(errors, -sigma, "rmse", intervals=2)      # keeps pixels 0 and 3
    np.testing.assert_allclose(worse, [math.sqrt(10 / 4), math.sqrt(10 / 2), 0.0])
    # trapezoids over q = 0, 0.5, 1: 0.25 * (c0 + 2 c1 + c2); the oracle's c1 = 0
    assert ause(worse, oracle) == pytest.approx(0.5 * math.sqrt(10 / 2))
    rel = sparsification_curve(pixel_errors(pred, gt, "abs_rel"), sigma, "abs_rel", intervals=2)
    np.testing.assert_allclose(rel, [(1.0 + 0.6) / 4, 0.0, 0.0])


def test_oracle_ordering_scores_zero_and_random_scores_worse_than_the_true_error():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1.0, 9.0, size=(48, 64))
    pred = gt + rng.normal(0.0, 0.1 + 0.05 * gt)                 # noise growing with depth
    valid = np.ones_like(gt, dtype=bool)
    true_error = {"rmse": np.abs(pred - gt), "abs_rel": np.abs(pred - gt) / gt}   # each metric's own order
    for metric in ("rmse", "abs_rel"):
        scores = {}
        noisy = true_error[metric] * np.exp(rng.normal(0.0, 1.0, size=gt.shape))   # informative, not exact
        for name, sigma in (("oracle", true_error[metric]), ("informative", noisy), ("random", rng.random(gt.shape))):
            acc = SparsificationAccumulator(metrics=[metric])
            acc.update(pred, gt, sigma, valid)
            scores[name] = acc.compute()[metric]
        assert scores["oracle"]["ause"] == pytest.approx(0.0, abs=1e-12)
        assert scores["random"]["ause"] > scores["informative"]["ause"] > 0
        curve = scores["oracle"]["curve"]
        assert len(curve) == 51 and curve[-1] == 0.0 and all(a >= b for a, b in zip(curve, curve[1:]))
