"""Training augmentation, the BTS/AdaBins recipe as the SG study's loader applies it
(docs/design.md §3, §8; sincostanx/Undergrad-Thesis dataloader.py).

In order: a pre-crop to `precrop` (auto: BTS's box (43, 45, 608, 472) of a 480x640 NYU frame,
whose border has no registered depth; scaled to the frame; real data only), random rotation
in [-rotate_deg, rotate_deg] (bilinear RGB, nearest depth, so depth never blends across
edges; pixels rotated in from outside the frame are 0 = no depth), random crop of
`crop_size` (auto = 416x544 scaled from 480x640 to the frame), horizontal flip, and with
probability `color` a photometric jitter of the RGB: rgb ** gamma, times brightness,
contrast around the mean, times per-channel factors, clamped to [0, 1] (factors uniform in
the `gamma`, `brightness`, `contrast`, `channel` ranges).

All random numbers come from the generator passed in; the dataset makes one per
(run seed, epoch, sample index) with `augment_rng`, so a sample is augmented the same
whatever the number of DataLoader workers, and a resumed run replays exactly. Extra
per-pixel maps (e.g. cached base-learner depths [K,H,W]) get the same geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ensemble_mde.errors import ConfigError

REFERENCE_FRAME = (480, 640)  # NYU frame the BTS/AdaBins crop size and pre-crop box refer to
REFERENCE_CROP = (416, 544)
BTS_PRECROP = (43, 45, 608, 472)  # (left, top, right, bottom): BTS's NYU training frames keep this box


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the augmentation: angle in degrees (counter-clockwise), crop as
    (top, left, height, width) in pixels of the rotated frame, flip, and colour as
    (gamma, brightness, contrast, (r, g, b) factors) or None."""

    angle: float
    crop: tuple[int, int, int, int]
    flip: bool
    color: tuple[float, float, float, tuple[float, float, float]] | None


def augment_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator that augments sample `index` in `epoch` of a run seeded `seed`."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def precrop_box(cfg_augment: dict, height: int, width: int, synthetic: bool) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) that `augment.precrop` keeps of a height x width frame, or None.
    auto: BTS's box on real frames, none on synthetic ones; a box [left, top, right, bottom]
    refers to a 480x640 frame and is scaled to this one."""
    box = cfg_augment.get("precrop")  # .get: configs of runs started before the key existed
    if box is None or (box == "auto" and synthetic):
        return None
    if box == "auto":
        box = BTS_PRECROP
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, int) for v in box)
            and 0 <= box[0] < box[2] <= REFERENCE_FRAME[1] and 0 <= box[1] < box[3] <= REFERENCE_FRAME[0]):
        raise ConfigError(f"augment.precrop must be auto, null or [left, top, right, bottom] inside a 480x640 frame, "
                          f"got {box!r}", "augment.precrop")
    sy, sx = height / REFERENCE_FRAME[0], width / REFERENCE_FRAME[1]
    top, left = round(box[1] * sy), round(box[0] * sx)
    return top, left, round(box[3] * sy) - top, round(box[2] * sx) - left


def crop_size(cfg_augment: dict, height: int, width: int) -> tuple[int, int]:
    """[h, w] of the random crop for a height x width frame (the whole frame when crop is off)."""
    if not cfg_augment["crop"]:
        return height, width
    size = cfg_augment["crop_size"]
    if size == "auto":
        return (min(height, round(height * REFERENCE_CROP[0] / REFERENCE_FRAME[0])),
                min(width, round(width * REFERENCE_CROP[1] / REFERENCE_FRAME[1])))
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ConfigError(f"augment.crop_size must be auto or [H, W] in pixels, got {size!r}", "augment.crop_size")
    if size[0] > height or size[1] > width:
        raise ConfigError(f"augment.crop_size {size[0]}x{size[1]} is larger than the {height}x{width} frame",
                          "augment.crop_size")
    return int(size[0]), int(size[1])


def draw_params(rng: np.random.Generator, cfg_augment: dict, height: int, width: int) -> AugmentParams:
    """Draw one augmentation for a height x width frame from `rng`."""
    limit = float(cfg_augment["rotate_deg"])
    angle = float(rng.uniform(-limit, limit)) if limit > 0 else 0.0
    ch, cw = crop_size(cfg_augment, height, width)
    top = int(rng.integers(0, height - ch + 1))
    left = int(rng.integers(0, width - cw + 1))
    flip = bool(rng.random() < float(cfg_augment["flip"]))
    color = None
    if rng.random() < float(cfg_augment["color"]):
        gamma, brightness, contrast = (float(rng.uniform(*cfg_augment[key])) for key in ("gamma", "brightness",
                                                                                         "contrast"))
        color = (gamma, brightness, contrast, tuple(float(v) for v in rng.uniform(*cfg_augment["channel"], size=3)))
    return AugmentParams(angle=angle, crop=(top, left, ch, cw), flip=flip, color=color)


def rotation_grid(angle_deg: float, height: int, width: int,
                  window: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """grid_sample's grid [1,h,w,2] that rotates a height x width frame counter-clockwise by
    `angle_deg` about its centre, for the output pixels in `window` (top, left, height,
    width; default the whole frame)."""
    top, left, out_h, out_w = window or (0, 0, height, width)
    a = math.radians(angle_deg)
    ys = torch.arange(top, top + out_h, dtype=torch.float32) + 0.5 - height / 2
    xs = torch.arange(left, left + out_w, dtype=torch.float32) + 0.5 - width / 2
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    # Output pixel (x, y) samples the source at the point rotated back by -angle (y points down).
    src_x = math.cos(a) * x - math.sin(a) * y
    src_y = math.sin(a) * x + math.cos(a) * y
    return torch.stack((src_x / (width / 2), src_y / (height / 2)), dim=-1)[None]


def rotate(maps: torch.Tensor, angle_deg: float, mode: str,
           window: tuple[int, int, int, int] | None = None, grid: torch.Tensor | None = None) -> torch.Tensor:
    """[C,H,W] rotated counter-clockwise by `angle_deg` about the frame centre; `mode`
    "bilinear" or "nearest"; pixels from outside the frame are 0. Only the output pixels
    in `window` are computed. `grid`: rotation_grid(angle_deg, H, W, window), when the
    caller rotates several maps of one frame."""
    if grid is None:
        grid = rotation_grid(angle_deg, *maps.shape[-2:], window)
    out = F.grid_sample(maps[None].float(), grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out[0].to(maps.dtype)


def warp(maps: torch.Tensor, params: AugmentParams, mode: str, grid: torch.Tensor | None = None) -> torch.Tensor:
    """The geometric part of `params` (rotate, crop, flip) applied to [C,H,W] maps; `grid`
    as for `rotate`."""
    if params.angle:
        maps = rotate(maps, params.angle, mode, window=params.crop, grid=grid)
    else:
        top, left, h, w = params.crop
        maps = maps[:, top:top + h, left:left + w]
    return maps.flip(-1) if params.flip else maps.contiguous()


def jitter_color(rgb: torch.Tensor, color: tuple[float, float, float, tuple[float, float, float]]) -> torch.Tensor:
    """[3,H,W] in [0,1] -> rgb ** gamma, times brightness, contrast around its mean, times
    per-channel factors; clamped to [0, 1]."""
    gamma, brightness, contrast, channels = color
    if gamma != 1.0:
        rgb = rgb.pow(gamma)
    mean = float(rgb.mean()) * brightness
    # ((rgb * b - mean) * c + mean) * k, folded into one multiply-add per pixel
    k = torch.tensor(channels, dtype=rgb.dtype).view(3, 1, 1)
    return torch.addcmul(k * (mean * (1.0 - contrast)), rgb, k * (brightness * contrast)).clamp_(0.0, 1.0)


def augment_sample(sample: dict, rng: np.random.Generator, cfg_augment: dict,
                   extra_maps: dict[str, torch.Tensor] | None = None, extra_mode: str = "bilinear",
                   synthetic: bool = False) -> dict:
    """A new sample dict with `rgb` [3,H,W] and `depth` [1,H,W] augmented; each extra map
    ([K,H,W] at the same H,W, e.g. {"base_depths": cached predictions}) gets the same
    pre-crop/rotation/crop/flip with `extra_mode` ("bilinear" or "nearest") and is added under
    its key. `synthetic`: the frame is rendered (auto pre-crop off). Other keys (name, scene,
    focal, index) are copied unchanged."""
    h, w = sample["rgb"].shape[-2:]
    extra_maps = extra_maps or {}
    for key, maps in extra_maps.items():
        if tuple(maps.shape[-2:]) != (h, w):
            raise ValueError(f"extra map {key!r} is {tuple(maps.shape[-2:])}, the frame is {(h, w)}")
    box = precrop_box(cfg_augment, h, w, synthetic)
    ch, cw = crop_size(cfg_augment, h, w)  # of the whole frame: 416x544 of 480x640, as BTS crops its box
    if box is not None:
        top, left, bh, bw = box
        sample = {**sample, "rgb": sample["rgb"][:, top:top + bh, left:left + bw],
                  "depth": sample["depth"][:, top:top + bh, left:left + bw]}
        extra_maps = {k: m[:, top:top + bh, left:left + bw] for k, m in extra_maps.items()}
        h, w = bh, bw
    params = draw_params(rng, {**cfg_augment, "crop_size": [min(ch, h), min(cw, w)]}, h, w)
    # One rotation grid for the frame, and one grid_sample for RGB with the bilinear extra
    # maps: per channel the same arithmetic as warping each alone.
    grid = rotation_grid(params.angle, h, w, params.crop) if params.angle else None
    together = [sample["rgb"], *(extra_maps.values() if extra_mode == "bilinear" else ())]
    warped = warp(torch.cat(together) if len(together) > 1 else together[0], params, "bilinear", grid)
    pieces = iter(torch.split(warped, [m.shape[0] for m in together]))
    out = dict(sample)
    out["rgb"] = next(pieces).clamp(0.0, 1.0)
    out["depth"] = warp(sample["depth"], params, "nearest", grid)
    if params.color is not None:
        out["rgb"] = jitter_color(out["rgb"], params.color)
    for key, maps in extra_maps.items():
        out[key] = next(pieces) if extra_mode == "bilinear" else warp(maps, params, extra_mode, grid)
    return out
