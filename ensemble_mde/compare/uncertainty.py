"""Ensemble uncertainty in a comparison (`compare --uncertainty`): for every variant whose depth
blends several base depths, the spread sigma = sqrt(sum_k W_k (D_k - D)^2) of those depths
around its depth D under its weights (ensemble_mde.uncertainty), scored by sparsification
(AUSE, AURG) over the pixels the metrics score, per image and then averaged over images as
Poggi et al.'s evaluate.py does.

Which variants have one: stacked ensembles with a softmax head (W: their per-pixel weights),
and the mean, median and weighted baselines (W = 1/K, 1/K around the median, the fixed
1/validation-RMSE weights: `AveragingBaseline.spread_weights`). With flip TTA every base map
of the straight pass and its mirrored twin (flipped back) count at half weight, since the TTA
depth is the mean of both. A single base has no spread; the relaxed head predicts depth, not
a blend; an oracle's depth is chosen by the GT: their rows show "—".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ensemble_mde.compare.tables import Column, Comparison, Table, mark_ranks
from ensemble_mde.compare.variants import Variant
from ensemble_mde.metrics import scored_pixels
from ensemble_mde.uncertainty import CURVE_METRICS, SparsificationAccumulator, blend_spread, ensemble_sigma

METRIC_LABELS = {"rmse": "RMSE", "abs_rel": "REL"}


class SpreadScores:
    """The sparsification of one variant's uncertainty: `add(depth, sigma, gt)` per image
    (depth and sigma [1,h,w] metres, upsampled bilinearly to the GT [1,H,W] as the metrics
    upsample the depth); `compute()` -> SparsificationAccumulator.compute() (None: no image)."""

    def __init__(self, *, min_depth: float, max_depth: float, eigen_crop: bool):
        self.scoring = {"min_depth": min_depth, "max_depth": max_depth, "eigen_crop": eigen_crop}
        self.accumulator = SparsificationAccumulator()

    def add(self, depth: torch.Tensor, sigma: torch.Tensor, gt: torch.Tensor, name: str | None = None) -> None:
        pred, target, valid = scored_pixels(depth, gt, name=name, **self.scoring)
        if tuple(sigma.shape[-2:]) != tuple(target.shape):
            sigma = F.interpolate(sigma.reshape(1, 1, *sigma.shape[-2:]).float(), size=tuple(target.shape),
                                  mode="bilinear", align_corners=False)
        self.accumulator.update(pred, target, sigma.reshape(target.shape), valid)

    def compute(self) -> dict | None:
        return self.accumulator.compute()


def prediction_spread(p) -> torch.Tensor | None:
    """[1,h,w] sigma of a stacked ensemble's `Prediction` (evaluation.predictions) around its
    depth; None without weights (a base, the relaxed head)."""
    def batched(outputs):
        return None if outputs is None else {k: v[None] for k, v in outputs.items()}

    sigma = blend_spread(batched(p.outputs), batched(p.mirrored), p.depth[None].to(p.outputs["depth"].device))
    return None if sigma is None else sigma[0].float().cpu()


def baseline_spread(combiner, views: list[torch.Tensor], depth: torch.Tensor) -> torch.Tensor | None:
    """[1,1,H,W] sigma of a baseline's depth [1,1,H,W] over each base's views [V,H,W]
    (straight, and mirrored flipped back with flip TTA) at the GT size; None for an oracle."""
    weights = combiner.spread_weights(len(views))
    if weights is None:
        return None
    maps = torch.cat(views)[None].to(depth.dtype)                                    # [1, K*V, H, W]
    per_view = (weights.to(depth.dtype) / len(views[0])).repeat_interleave(len(views[0]))
    return ensemble_sigma(maps, per_view.view(1, -1, 1, 1), depth)


def variant_sparsification(v: Variant) -> dict | None:
    """A variant's sparsification over its seeds: {metric: {"curve", "oracle" (mean curves),
    "ause", "aurg" (mean), "ause_std", "aurg_std" (sample std over seeds, None for one)}};
    None when its runs have no uncertainty."""
    scored = [r.sparsification for r in v.results if r.sparsification is not None]
    if not scored:
        return None
    out = {}
    for m in CURVE_METRICS:
        entry = {key: np.mean([s[m][key] for s in scored], axis=0).tolist() for key in ("curve", "oracle")}
        for key in ("ause", "aurg"):
            values = np.array([s[m][key] for s in scored])
            entry[key] = float(values.mean())
            entry[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else None
        out[m] = entry
    return out


def uncertainty_table(comparison: Comparison) -> Table | None:
    """AUSE and AURG of RMSE and REL for every variant ("—" for those without an uncertainty);
    None when the comparison was run without --uncertainty."""
    if not comparison.info.get("uncertainty"):
        return None
    columns = []
    for m in CURVE_METRICS:
        columns += [Column(f"ause_{m}", f"AUSE {METRIC_LABELS[m]}", f"AUSE {METRIC_LABELS[m]}", "lower"),
                    Column(f"aurg_{m}", f"AURG {METRIC_LABELS[m]}", f"AURG {METRIC_LABELS[m]}", "higher")]
    rows = []
    for v in comparison.variants:
        scores = variant_sparsification(v)
        values, std = {}, {}
        for m in CURVE_METRICS:
            for key in ("ause", "aurg"):
                values[f"{key}_{m}"] = scores[m][key] if scores else None
                if scores and scores[m][f"{key}_std"] is not None:
                    std[f"{key}_{m}"] = scores[m][f"{key}_std"]
        rows.append({"name": v.name, "kind": v.kind, "upper_bound": v.upper_bound, "n_seeds": len(v.results),
                     "values": values, "std": std, "text": {}})
    notes = ["Uncertainty: sigma = sqrt(sum_k W_k (D_k - D)^2), the spread of the base depths D_k around the "
             "variant's depth D under its weights W (softmax ensembles: the meta-learner's per-pixel weights; "
             "mean and median: 1/K; weighted: its fixed weights)"
             + ("; with flip TTA over both passes' maps at half weight" if comparison.info.get("flip") else "") + ".",
             "Sparsification (Poggi et al., CVPR 2020, as their evaluate.py compute_aucs does it): per image, remove "
             "the most uncertain pixels in 2% steps and score the rest; AUSE = area between that curve and the "
             "oracle's (pixels removed by their true error; 0 is perfect, ↓), AURG = area gained over removing "
             "pixels at random (↑); both averaged over images (and seeds).",
             "— : no uncertainty: a single base learner, the relaxed head (it predicts depth, not a blend), the "
             "oracles (their depth is chosen by the ground truth)."]
    return mark_ranks(Table("Uncertainty: sparsification of the ensemble spread", columns, rows, notes))
