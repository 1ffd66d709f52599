"""NYU Depth V2 evaluation protocol (docs/design.md §4), as BTS and AdaBins `compute_errors` do it.

Per image, over valid pixels (p = prediction, g = ground truth, metres; log natural):
d1/d2/d3 = fraction of max(p/g, g/p) < 1.25, 1.25^2, 1.25^3; abs_rel = mean(|p-g|/g);
sq_rel = mean((p-g)^2/g); rmse = sqrt(mean((p-g)^2)); rmse_log = sqrt(mean((log p - log g)^2));
log10 = mean(|log10 p - log10 g|); silog = 100 sqrt(mean(e^2) - mean(e)^2), e = log p - log g.
Then the mean over images. The prediction is upsampled bilinearly (align_corners=False) to
the GT size and clipped to [min_depth, max_depth]; valid GT is min_depth < g < max_depth,
optionally inside an evaluation crop (NYU's Eigen crop; KITTI's Garg or Eigen crop). No
median scaling. Computed in float64.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ensemble_mde.errors import DataError

METRIC_KEYS = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")
HIGHER_IS_BETTER = {"d1", "d2", "d3"}

# Eigen crop of a 480x640 NYU frame (BTS/AdaBins `eval_mask[45:471, 41:601]`).
EIGEN_CROP_480x640 = (45, 471, 41, 601)
# KITTI's crops as (top, bottom, left, right) fractions of the GT height and width, sliced as
# BTS/AdaBins (and the SG study's evaluate.py) do: rows int(top*H):int(bottom*H), columns
# int(left*W):int(right*W) of the kb-cropped GT.
KITTI_CROPS = {"kitti_garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
               "kitti_eigen": (0.3324324, 0.91351351, 0.0359477, 0.96405229)}
CROP_LABELS = {True: "Eigen crop", "kitti_garg": "Garg crop", "kitti_eigen": "KITTI Eigen crop"}


def eigen_crop_mask(h: int, w: int) -> torch.Tensor:
    """Bool [h,w], True inside the Eigen crop: rows 45:471, cols 41:601 at 480x640.

    Other sizes scale each bound with integer floor division, e.g. top = (45*h)//480,
    bottom = (471*h)//480, left = (41*w)//640, right = (601*w)//640 (240x320: 22:235, 20:300);
    480x640 gives exactly 45:471, 41:601.
    """
    top, bottom, left, right = EIGEN_CROP_480x640
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[(top * h) // 480:(bottom * h) // 480, (left * w) // 640:(right * w) // 640] = True
    return mask


def crop_mask(crop: bool | str, h: int, w: int) -> torch.Tensor | None:
    """Bool [h,w] of the evaluation crop `crop` names: True = NYU's Eigen crop
    (`eigen_crop_mask`), "kitti_garg" / "kitti_eigen" = KITTI_CROPS; None for False (no crop)."""
    if not isinstance(crop, str):
        return eigen_crop_mask(h, w) if crop else None
    if crop not in KITTI_CROPS:
        raise ValueError(f"unknown evaluation crop {crop!r}; one of True, False, {', '.join(KITTI_CROPS)}")
    top, bottom, left, right = KITTI_CROPS[crop]
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[int(top * h):int(bottom * h), int(left * w):int(right * w)] = True
    return mask


def crop_label(crop: bool | str) -> str:
    """How a report names the evaluation crop: "Eigen crop", "Garg crop", ...; "" for none."""
    return CROP_LABELS.get(crop, "") if crop else ""


def _shape(x) -> tuple:
    """Shape of a tensor (any device) or array-like."""
    return tuple(x.shape) if isinstance(x, torch.Tensor) else tuple(np.shape(x))


def _as_map(x, what: str, name: str | None) -> torch.Tensor:
    """Tensor/ndarray [H,W], [1,H,W] or [1,1,H,W] -> float64 CPU tensor [H,W]."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    shape = tuple(t.shape)
    while t.ndim > 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2:
        raise DataError(f"{what} of {name or 'image'} has shape {shape}; expected [H,W], [1,H,W] or [1,1,H,W]",
                        where=name)
    return t.to("cpu", torch.float64)


def scored_pixels(pred, gt, *, min_depth: float = 1e-3, max_depth: float = 10.0, eigen_crop: bool | str = False,
                  name: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prediction, GT, valid) [H,W] float64 / bool as `depth_metrics` scores them: the
    prediction upsampled to the GT and clipped, valid the GT pixels inside the range (and the
    evaluation crop: `crop_mask`, True = NYU's Eigen crop, or a KITTI crop name). Raises
    DataError naming `name` if no GT pixel is valid."""
    p = _as_map(pred, "prediction", name)
    g = _as_map(gt, "ground truth", name)
    if p.shape != g.shape:
        p = F.interpolate(p[None, None], size=tuple(g.shape), mode="bilinear", align_corners=False)[0, 0]
    p = torch.nan_to_num(p, nan=min_depth, posinf=max_depth, neginf=min_depth).clamp(min_depth, max_depth)

    valid = (g > min_depth) & (g < max_depth)
    mask = crop_mask(eigen_crop, *g.shape)
    if mask is not None:
        valid &= mask
    if not bool(valid.any()):
        where = f" inside the {crop_label(eigen_crop)}" if eigen_crop else ""
        raise DataError(f"{name or 'image'}: no valid ground-truth pixel ({min_depth} < depth < {max_depth}{where})",
                        where=name)
    return p, g, valid


def depth_metrics(pred, gt, *, min_depth: float = 1e-3, max_depth: float = 10.0, eigen_crop: bool | str = False,
                  name: str | None = None) -> dict[str, float]:
    """NYU metrics of ONE image: pred and gt in metres, tensor or ndarray, [H,W] / [1,H,W] /
    [1,1,H,W] (pred may be smaller than gt: it is upsampled). Returns {key: float} for
    METRIC_KEYS. Non-finite predictions follow AdaBins: +inf -> max_depth, NaN -> min_depth.
    eigen_crop: the evaluation crop (`scored_pixels`). Raises DataError naming `name` if no GT
    pixel is valid.
    """
    p, g, valid = scored_pixels(pred, gt, min_depth=min_depth, max_depth=max_depth, eigen_crop=eigen_crop, name=name)
    p, g = p[valid], g[valid]

    ratio = torch.maximum(p / g, g / p)
    diff = p - g
    e = torch.log(p) - torch.log(g)
    silog_var = (e * e).mean() - e.mean() ** 2
    out = {
        "d1": (ratio < 1.25).double().mean(),
        "d2": (ratio < 1.25 ** 2).double().mean(),
        "d3": (ratio < 1.25 ** 3).double().mean(),
        "abs_rel": (diff.abs() / g).mean(),
        "sq_rel": (diff * diff / g).mean(),
        "rmse": (diff * diff).mean().sqrt(),
        "rmse_log": (e * e).mean().sqrt(),
        "log10": (torch.log10(p) - torch.log10(g)).abs().mean(),
        "silog": 100.0 * silog_var.clamp_min(0.0).sqrt(),
    }
    return {k: float(out[k]) for k in METRIC_KEYS}


class MetricAccumulator:
    """Scores images one at a time and keeps every per-image result (for bootstrap CIs).

    `update(pred, gt, name=None)`: one image ([H,W], [1,H,W]) or a batch (4-D [B,1,H,W]
    pred and gt, `name` a list of B names or None). `compute()` = mean over images of each
    metric + `n_images`: the same whatever the batching.
    """

    def __init__(self, *, min_depth: float = 1e-3, max_depth: float = 10.0, eigen_crop: bool | str = False):
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.eigen_crop = eigen_crop if isinstance(eigen_crop, str) else bool(eigen_crop)  # see crop_mask
        self.per_image: list[dict] = []        # {"name": str, **metrics} in update order

    def update(self, pred, gt, name=None) -> None:
        if len(_shape(pred)) == 4:
            gt_shape = _shape(gt)
            if len(gt_shape) != 4 or gt_shape[0] != len(pred):
                raise DataError(f"batch of {len(pred)} predictions needs a [B,1,H,W] ground truth with B = "
                                f"{len(pred)}, got shape {gt_shape}")
            names = [None] * len(pred) if name is None else [name] if isinstance(name, str) else list(name)
            if len(names) != len(pred):
                raise DataError(f"{len(names)} names for a batch of {len(pred)} images")
            for p, g, n in zip(pred, gt, names):
                self._add(p, g, n)
        else:
            self._add(pred, gt, name)

    def _add(self, pred, gt, name) -> None:
        name = f"image_{len(self.per_image)}" if name is None else str(name)
        scores = depth_metrics(pred, gt, min_depth=self.min_depth, max_depth=self.max_depth,
                               eigen_crop=self.eigen_crop, name=name)
        self.per_image.append({"name": name, **scores})

    def __len__(self) -> int:
        return len(self.per_image)

    def compute(self) -> dict:
        """{metric: mean over images} for METRIC_KEYS, plus "n_images"."""
        if not self.per_image:
            raise DataError("no image was scored: the evaluation set is empty")
        out = {k: math.fsum(r[k] for r in self.per_image) / len(self.per_image) for k in METRIC_KEYS}
        out["n_images"] = len(self.per_image)
        return out


def flip_tta(predict: Callable[[torch.Tensor], torch.Tensor], rgb: torch.Tensor) -> torch.Tensor:
    """Flip test-time augmentation: mean of predict(rgb) and the mirrored-back prediction of
    the mirrored image. predict: rgb [B,3,H,W] -> depth [B,1,H,W]."""
    straight = predict(rgb)
    mirrored = predict(torch.flip(rgb, dims=[-1]))
    return 0.5 * (straight + torch.flip(mirrored, dims=[-1]))
