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


def poggi_compute_aucs(gt, pred, uncert, metric, intervals=50):
    """AUSE and AURG of one image as mono-uncertainty's evaluate.py `compute_aucs` computes
    them (github.com/mattpoggi/mono-uncertainty, MIT licence), for one metric."""
    def score(mask):
        p, g = pred[mask], gt[mask]
        return (np.abs(g - p) / g).mean() if metric == "abs_rel" else np.sqrt(((g - p) ** 2).mean())

    true_uncert = -(np.abs(gt - pred) / gt if metric == "abs_rel" else (gt - pred) ** 2)
    quants = [100. / intervals * t for t in range(0, intervals)]
    plotx = [1. / intervals * t for t in range(0, intervals + 1)]
    curve = [score(-uncert >= np.percentile(-uncert, q)) for q in quants] + [0]
    opt = [score(true_uncert >= np.percentile(true_uncert, q)) for q in quants] + [0]
    return np.trapezoid(curve, x=plotx) - np.trapezoid(opt, x=plotx), curve[0] - np.trapezoid(curve, x=plotx)


@pytest.mark.parametrize("n", [7, 100, 3072])
def test_ause_and_aurg_per_image_and_averaged_are_those_of_the_reference_code(n):
    rng = np.random.default_rng(n)
    images = []
    for _ in range(3):
        gt = rng.uniform(1.0, 9.0, size=n)
        pred = gt + rng.normal(0.0, 0.1 + 0.05 * gt)
        images.append((gt, pred, np.abs(pred - gt) * np.exp(rng.normal(0.0, 1.0, size=n))))
    acc = SparsificationAccumulator()
    for gt, pred, sigma in images:
        acc.update(pred, gt, sigma, np.ones(n, dtype=bool))
    scores = acc.compute()
    assert scores["n_images"] == 3
    for metric in ("rmse", "abs_rel"):
        reference = np.mean([poggi_compute_aucs(gt, pred, sigma, metric) for gt, pred, sigma in images], axis=0)
        assert [scores[metric]["ause"], scores[metric]["aurg"]] == pytest.approx(reference.tolist(), abs=1e-12)


def test_the_spread_of_a_flip_tta_blend_counts_both_passes_at_half_weight():
    from ensemble_mde.uncertainty import blend_spread

    straight = {"base_depths": torch.tensor([[1.0, 2.0], [3.0, 3.0]]).view(1, 2, 1, 2),
                "weights": torch.tensor([[1.0, 0.5], [0.0, 0.5]]).view(1, 2, 1, 2)}
    # pixel 0: the blend is 1 with no spread; pixel 1: 2 and 3 at 1/2 each around 2.5 -> 0.5
    assert blend_spread(straight).flatten().tolist() == pytest.approx([0.0, 0.5])
    # the mirrored pass, not flipped back: its pixel 1 is the straight pass's pixel 0
    mirrored = {"base_depths": torch.tensor([[5.0, 1.0], [5.0, 1.0]]).view(1, 2, 1, 2),
                "weights": torch.tensor([[0.5, 1.0], [0.5, 0.0]]).view(1, 2, 1, 2)}
    # pixel 0: maps 1, 3, 1, 1 at weights 1/2, 0, 1/2, 0 around 1 -> 0; pixel 1: 2, 3, 5, 5 at 1/4 each around 3.75
    sigma = blend_spread(straight, mirrored).flatten()
    assert sigma.tolist() == pytest.approx([0.0, math.sqrt((1.75 ** 2 + 0.75 ** 2 + 2 * 1.25 ** 2) / 4)])
    assert blend_spread({"depth": torch.ones(1, 1, 1, 2), "base_depths": straight["base_depths"]}) is None
