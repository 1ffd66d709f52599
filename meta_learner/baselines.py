"""Averaging baselines every comparison reports next to the stacked ensembles (docs/design.md §7).

One interface: `forward(base_depths [B,K,H,W] metres, gt [B,1,H,W] | None) -> depth [B,1,H,W]`.

- MeanEnsemble: the simple average (the paper's "Baseline").
- MedianEnsemble: the per-pixel median (mean of the two middle values for even K).
- WeightedEnsemble: fixed weights proportional to 1 / validation RMSE, normalised.
- OracleEnsemble (selection oracle): per pixel the base closest to the ground truth. No
  single base has a smaller per-pixel absolute error; it bounds selecting one base per
  pixel, not blends, and not log or ratio metrics of an image (a near-zero base that wins
  on near pixels can ruin RMSE log).
- ConvexOracleEnsemble (convex oracle): per pixel the GT clipped into [min_k D_k, max_k D_k],
  the best any per-pixel convex blend can do (the meta-learner's softmax weights, the mean,
  the median, fixed weights): none of them has a smaller per-pixel absolute error, nor,
  since the clipped value is also the nearest in log and in ratio, a worse score on any
  metric built from per-pixel terms (all but SILog).
Both need GT, so they are upper bounds for reports (`upper_bound = True`), never methods.
Where GT is invalid they fall back to the mean.
"""

from __future__ import annotations

import torch
from torch import nn

from base_learners.common import valid_mask
from ensemble_mde.errors import ModelError
from meta_learner.ensemble import blend, run_bases


class AveragingBaseline(nn.Module):
    """forward(base_depths [B,K,H,W], gt [B,1,H,W] | None) -> [B,1,H,W]; `needs_gt`: forward
    needs the ground truth; `upper_bound`: reports mark it as a bound, not a method."""

    needs_gt = False
    upper_bound = False

    def spread_weights(self, k: int) -> torch.Tensor | None:
        """[K] the weight of each of K bases in this baseline's uncertainty, the spread
        sqrt(sum_k W_k (D_k - D)^2) around its depth D (ensemble_mde.uncertainty): 1/K."""
        return torch.full((k,), 1.0 / k)


class MeanEnsemble(AveragingBaseline):
    def forward(self, base_depths: torch.Tensor, gt: torch.Tensor | None = None) -> torch.Tensor:
        return base_depths.mean(dim=1, keepdim=True)


class MedianEnsemble(AveragingBaseline):
    def forward(self, base_depths: torch.Tensor, gt: torch.Tensor | None = None) -> torch.Tensor:
        ordered = base_depths.sort(dim=1).values
        k = ordered.shape[1]
        middle = ordered[:, (k - 1) // 2: k // 2 + 1]      # one map for odd K, two for even K
        return middle.mean(dim=1, keepdim=True)


class WeightedEnsemble(AveragingBaseline):
    """Weights w_k = (1 / rmse_k) / sum_j (1 / rmse_j) from each base's validation RMSE (metres)."""

    def __init__(self, val_rmse: list[float]):
        super().__init__()
        rmse = torch.as_tensor([float(r) for r in val_rmse], dtype=torch.float64)
        if rmse.numel() < 1 or not bool(torch.isfinite(rmse).all() and (rmse > 0).all()):
            raise ModelError(f"weighted baseline needs positive finite validation RMSEs, got {list(val_rmse)}")
        inverse = 1.0 / rmse
        self.register_buffer("weights", (inverse / inverse.sum()).float())

    def forward(self, base_depths: torch.Tensor, gt: torch.Tensor | None = None) -> torch.Tensor:
        return blend(self.weights.to(base_depths.dtype).view(1, -1, 1, 1), base_depths)

    def spread_weights(self, k: int) -> torch.Tensor:
        return self.weights


class OracleEnsemble(AveragingBaseline):
    """Per pixel the base depth nearest the GT (the selection oracle: it looks at the answer)."""

    needs_gt = True
    upper_bound = True

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0):
        super().__init__()
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)

    def spread_weights(self, k: int) -> None:
        """None: an oracle's depth is chosen by the GT, so no spread of the bases is its uncertainty."""
        return None

    def forward(self, base_depths: torch.Tensor, gt: torch.Tensor | None = None) -> torch.Tensor:
        if gt is None:
            raise ModelError(f"{type(self).__name__} needs the ground-truth depth")
        if gt.shape[-2:] != base_depths.shape[-2:]:
            raise ModelError(f"{type(self).__name__}: GT {tuple(gt.shape)} and base depths "
                             f"{tuple(base_depths.shape)} differ in size; resize the predictions to the GT first")
        return torch.where(valid_mask(gt, self.min_depth, self.max_depth), self.nearest(base_depths, gt),
                           base_depths.mean(dim=1, keepdim=True))

    def nearest(self, base_depths: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """[B,1,H,W]: per pixel the base depth nearest `gt`."""
        return base_depths.gather(1, (base_depths - gt).abs().argmin(dim=1, keepdim=True))


class ConvexOracleEnsemble(OracleEnsemble):
    """Per pixel the GT clipped into [min_k D_k, max_k D_k] (the convex oracle)."""

    def nearest(self, base_depths: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """[B,1,H,W]: per pixel the point of the bases' convex hull nearest `gt`."""
        return torch.minimum(torch.maximum(gt, base_depths.amin(dim=1, keepdim=True)),
                             base_depths.amax(dim=1, keepdim=True))


class BaselineOverBases(nn.Module):
    """A baseline run on live base learners: forward(rgb [B,3,H,W] in [0,1]) ->
    {"depth": [B,1,H,W], "base_depths": [B,K,H,W]}. What a user of the simple average runs
    (timed against the stacked ensemble over the same bases)."""

    def __init__(self, bases: nn.ModuleList, names: list[str], baseline: AveragingBaseline):
        super().__init__()
        if baseline.needs_gt:
            raise ModelError(f"{type(baseline).__name__} needs the ground truth; it cannot run on images alone")
        self.bases, self.names, self.baseline = bases, [str(n) for n in names], baseline

    def forward(self, rgb: torch.Tensor) -> dict:
        base_depths, _ = run_bases(self.bases, self.names, rgb)
        return {"depth": self.baseline(base_depths), "base_depths": base_depths}


BASELINES = {"mean": MeanEnsemble, "median": MedianEnsemble, "weighted": WeightedEnsemble, "oracle": OracleEnsemble,
             "convex": ConvexOracleEnsemble}
