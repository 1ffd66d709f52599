"""Per-pixel ensemble uncertainty and its calibration by sparsification (AUSE).

Uncertainty of an ensemble (docs/design.md §7): sigma = sqrt(sum_k W_k (D_k - D)^2), the spread
of the K base depths around the ensemble depth D under the ensemble's weights W (1/K for the
simple average): `ensemble_sigma`; of a stacked ensemble's outputs (with flip TTA, over the
maps of both passes): `blend_spread`.

Sparsification as Poggi et al. ("On the uncertainty of self-supervised monocular depth
estimation", CVPR 2020) compute it in their code (github.com/mattpoggi/mono-uncertainty,
evaluate.py): `compute_aucs(gt, pred, uncert)` takes ONE image's valid pixels, removes the
fraction q of the most uncertain for q = 0, 1/50, ..., 49/50, scores the rest (abs_rel, RMSE,
1 - a1) and ends the curve at 0 for q = 1; the oracle removes pixels in order of their own
error for that metric (|p-g|/g, (p-g)^2); AUSE = trapezoid area under the curve minus the
oracle's, AURG = the score of all pixels minus the area under the curve; `evaluate` then
averages AUSE and AURG over the test images. So the pixels are pooled per image and the
images averaged, not all test pixels pooled into one curve; this module does the same
(`SparsificationAccumulator`), and its mean curves are the mean over images of the per-image
curves, as the RMSE of a comparison is the mean of per-image RMSEs. One difference: they
select by `np.percentile` thresholds, which keeps all pixels tied at a threshold; here exactly
the ceil((n - 1) q) pixels their threshold removes when no two are tied are removed, ties
broken by position.
"""

from __future__ import annotations

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


def blend_spread(outputs: dict, mirrored: dict | None = None, depth: torch.Tensor | None = None
                 ) -> torch.Tensor | None:
    """sigma [B,1,h,w] metres of a stacked ensemble from its outputs ("base_depths" and
    "weights" [B,K,h,w]); with flip TTA `mirrored` holds the outputs for the mirrored image
    (not flipped back): its maps, flipped back, join the straight ones at half weight each, as
    the TTA depth is the mean of both blends. depth: the depth predicted (default: the blend).
    None without weights: a single model, or the relaxed head (it predicts depth, not a blend)."""
    if "weights" not in outputs or "base_depths" not in outputs:
        return None
    depths, weights = outputs["base_depths"], outputs["weights"]
    if mirrored is not None:
        depths = torch.cat([depths, torch.flip(mirrored["base_depths"], dims=[-1])], dim=1)
        weights = 0.5 * torch.cat([weights, torch.flip(mirrored["weights"], dims=[-1])], dim=1)
    return ensemble_sigma(depths.float(), weights.float(), None if depth is None else depth.float())


def pixel_errors(pred: np.ndarray, gt: np.ndarray, metric: str) -> np.ndarray:
    """Per-pixel error whose mean (rmse: root of the mean) is the metric: squared error or |p-g|/g."""
    if metric == "rmse":
        return (pred - gt) ** 2
    if metric == "abs_rel":
        return np.abs(pred - gt) / gt
    raise ValueError(f"sparsification metric must be one of {', '.join(CURVE_METRICS)}, got {metric!r}")


def sparsification_curve(errors: np.ndarray, order_key: np.ndarray, metric: str,
                         intervals: int = INTERVALS) -> np.ndarray:
    """[intervals + 1] values: the metric over the pixels left after removing, for q =
    t/intervals (t = 0 .. intervals-1), the ceil((n-1) q) of the n pixels with the largest
    `order_key` (those a threshold at np.percentile(key, 100 (1 - q)) removes), then 0 (nothing
    left). errors: per-pixel errors of `metric` (`pixel_errors`); ties in the key are broken
    by position, so the same key always removes the same pixels."""
    order = np.argsort(-order_key, kind="stable")                # most uncertain first
    n = len(errors)
    kept_sums = np.cumsum(errors[order][::-1])[::-1]             # [i]: sum of the errors from i on
    starts = np.array([-(-(n - 1) * t // intervals) for t in range(intervals)])   # exact integer ceil
    means = kept_sums[starts] / (n - starts)
    curve = np.sqrt(means) if metric == "rmse" else means
    return np.append(curve, 0.0)


def ause(curve: np.ndarray, oracle: np.ndarray) -> float:
    """Area between a sparsification curve and the oracle's, trapezoids over q in [0, 1]."""
    q = np.linspace(0.0, 1.0, len(curve))
    return float(np.trapezoid(curve, q) - np.trapezoid(oracle, q))


def aurg(curve: np.ndarray) -> float:
    """Area under the random curve (the score of all pixels at every q) minus the curve's:
    above 0 when the uncertainty removes the worse pixels first better than chance."""
    return float(curve[0] - np.trapezoid(curve, np.linspace(0.0, 1.0, len(curve))))


class SparsificationAccumulator:
    """One image at a time: `update(pred, gt, sigma, valid)` ([H,W] arrays/tensors, valid a
    bool mask: the pixels the metrics score). `compute()` -> {metric: {"curve": mean curve,
    "oracle": mean oracle curve, "random": the metric over all pixels (mean over images),
    "ause": mean AUSE, "aurg": mean AURG}} and "n_images"; None when no image was added."""

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

    def compute(self) -> dict | None:
        n = len(self.curves[self.metrics[0]])
        if n == 0:
            return None
        out: dict = {"n_images": n}
        for m in self.metrics:
            curves, oracles = np.asarray(self.curves[m]), np.asarray(self.oracles[m])
            out[m] = {"curve": curves.mean(0).tolist(), "oracle": oracles.mean(0).tolist(),
                      "random": float(curves[:, 0].mean()),
                      "ause": float(np.mean([ause(c, o) for c, o in zip(curves, oracles)])),
                      "aurg": float(np.mean([aurg(c) for c in curves]))}
        return out
