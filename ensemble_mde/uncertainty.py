"""Per-pixel ensemble uncertainty and its calibration by sparsification (AUSE).

Uncertainty of an ensemble (docs/design.md §7): sigma = sqrt(sum_k W_k (D_k - D)^2), the spread
of the K base depths around the ensemble depth D under the ensemble's weights W (1/K for the
simple average): `ensemble_sigma`.

Sparsification (Poggi et al., "On the uncertainty of self-supervised monocular depth
estimation", CVPR 2020; as their evaluate.py computes it, our own code): per image, over its
valid pixels, remove the fraction q of the most uncertain pixels for q = 0, 1/50, ..., 49/50
and score the rest (RMSE, abs_rel); the curve ends at 0 for q = 1. The oracle curve removes
pixels in order of their true error instead. AUSE = area under the curve minus area under the
oracle's (trapezoids over q in [0, 1]); 0 for an uncertainty that orders pixels as their
error does. Curves and AUSE are averaged over images, as Poggi et al. report them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

INTERVALS = 50
CURVE_METRICS = ("rmse", "abs_rel")


def ensemble_sigma(depths: torch.Tensor, weights: torch.Tensor | None = None,
                   depth: torch.Tensor | None = None) -> torch.Tensor:
    """depths [B,K,H,W] metres, weights [B,K,H,W] (or broadcastable; None = 1/K), depth
    [B,1,H,W] the ensemble's (None = sum_k W_k D_k) -> sigma [B,1,H,W] metres."""
    if weights is None:
        weights = torch.full_like(depths[:, :1], 1.0 / depths.shape[1]).expand_as(depths)
    if depth is None:
        depth = (weights * depths).sum(dim=1, keepdim=True)
    return (weights * (depths - depth) ** 2).sum(dim=1, keepdim=True).clamp_min(0.0).sqrt()


def pixel_errors(pred: np.ndarray, gt: np.ndarray, metric: str) -> np.ndarray:
    """Per-pixel error whose mean (rmse: root of the mean) is the metric: squared error or |p-g|/g."""
    if metric == "rmse":
        return (pred - gt) ** 2
    if metric == "abs_rel":
        return np.abs(pred - gt) / gt
    raise ValueError(f"sparsification metric must be one of {', '.join(CURVE_METRICS)}, got {metric!r}")


def _reduce(errors: np.ndarray, metric: str) -> float:
    return float(math.sqrt(errors.mean())) if metric == "rmse" else float(errors.mean())


def sparsification_curve(errors: np.ndarray, order_key: np.ndarray, metric: str,
                         intervals: int = INTERVALS) -> np.ndarray:
    """[intervals + 1] values: the metric over the pixels left after removing the fraction
    t/intervals with the largest `order_key` (t = 0 .. intervals-1), then 0 (nothing left).
    errors: per-pixel errors of `metric` (`pixel_errors`); ties in the key are broken by
    position, so the same key always removes the same pixels."""
    order = np.argsort(-order_key, kind="stable")                # most uncertain first
    kept_sorted = errors[order]
    n = len(errors)
    curve = [_reduce(kept_sorted[int(math.floor(n * t / intervals)):], metric) for t in range(intervals)]
    return np.asarray(curve + [0.0])


def ause(curve: np.ndarray, oracle: np.ndarray) -> float:
    """Area between a sparsification curve and the oracle's, trapezoids over q in [0, 1]."""
    q = np.linspace(0.0, 1.0, len(curve))
    return float(np.trapezoid(curve, q) - np.trapezoid(oracle, q))


class SparsificationAccumulator:
    """One image at a time: `update(pred, gt, sigma, valid)` ([H,W] arrays/tensors, valid a
    bool mask). `compute()` -> {metric: {"curve": mean curve, "oracle": mean oracle curve,
    "random": the metric over all pixels, "ause": mean AUSE}} and "n_images"."""

    def __init__(self, metrics=CURVE_METRICS, intervals: int = INTERVALS):
        self.metrics, self.intervals = tuple(metrics), int(intervals)
        self.curves = {m: [] for m in self.metrics}
        self.oracles = {m: [] for m in self.metrics}

    def update(self, pred, gt, sigma, valid) -> None:
        as_np = (lambda x: x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))
        mask = as_np(valid).astype(bool)
        p, g, u = (as_np(x).astype(np.float64)[mask] for x in (pred, gt, sigma))
        if len(p) == 0:
            return
        for m in self.metrics:
            errors = pixel_errors(p, g, m)
            self.curves[m].append(sparsification_curve(errors, u, m, self.intervals))
            self.oracles[m].append(sparsification_curve(errors, errors, m, self.intervals))

    def compute(self) -> dict:
        out: dict = {"n_images": len(self.curves[self.metrics[0]])}
        for m in self.metrics:
            curves, oracles = np.asarray(self.curves[m]), np.asarray(self.oracles[m])
            out[m] = {"curve": curves.mean(0).tolist(), "oracle": oracles.mean(0).tolist(),
                      "random": float(curves[:, 0].mean()),
                      "ause": float(np.mean([ause(c, o) for c, o in zip(curves, oracles)]))}
        return out
