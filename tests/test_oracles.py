"""The two oracles are bounds, each of what it says: per pixel in absolute error, the convex
oracle is never beaten by any base, the mean, the median or a stacked ensemble (whose depth is
a per-pixel convex blend of the base maps: softmax weights, `blend`), and the selection oracle
never by any single base."""

import torch

from meta_learner.baselines import BASELINES
from meta_learner.ensemble import blend, run_bases

from conftest import TinyLearner

H, W = 32, 32


def test_the_convex_and_selection_oracles_bound_what_they_say_per_pixel():
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, H, W)
    gt = 0.5 + 9 * torch.rand(2, 1, H, W)
    gt[:, :, :4] = 0.0                                                     # invalid GT rows: the mean there
    with torch.no_grad():
        depths, _ = run_bases([TinyLearner(seed).eval() for seed in range(3)], ["a", "b", "c"], rgb)
    # a near-zero base and one beyond every GT, so that the bases straddle the GT
    depths = torch.cat([depths, torch.full_like(depths[:, :1], 1e-3), torch.full_like(depths[:, :1], 10.0)], dim=1)
    weights = torch.softmax(3 * torch.randn(2, depths.shape[1], H, W), dim=1)   # what a meta-learner outputs
    candidates = {"stacked": blend(weights, depths),
                  **{name: BASELINES[name]()(depths) for name in ("mean", "median")},
                  **{f"base {k}": depths[:, k:k + 1] for k in range(depths.shape[1])}}
    convex = BASELINES["convex"]()(depths, gt)
    selection = BASELINES["oracle"]()(depths, gt)
    valid = gt > 1e-3

    def error(depth):
        return (depth - gt).abs()[valid]

    for name, depth in candidates.items():
        assert bool((error(convex) <= error(depth) + 1e-6).all()), name
    for k in range(depths.shape[1]):
        assert bool((error(selection) <= error(depths[:, k:k + 1]) + 1e-6).all()), k
    assert float(error(convex).mean()) < 0.1 * float(error(selection).mean())  # straddled: a blend hits the GT
    assert torch.equal(convex[~valid], BASELINES["mean"]()(depths)[~valid])
