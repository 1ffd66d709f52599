"""LDRN, LapDepth's Laplacian Depth Residual Network (Song et al., TCSVT 2021), on a
GhostNet encoder, as in the SG ensemble work: depthwise-separable decoder convolutions,
convolution before interpolation.

Facts from the public LapDepth code (tjqansthd/LapDepth-release, model.py, the `lv6`
variant whose deepest feature is at H/32; our own implementation):
- Dense ASPP (`Dilated_bottleNeck_lv6`) on the deepest feature, dilations 3, 6, 12, 18,
  each branch seeing the input and all earlier branch outputs.
- Laplacian pyramid of the (normalised) input: rgb_down_{2^i} by repeated bilinear 0.5x;
  level i's Laplacian = rgb_down_{2^i} - upsample(rgb_down_{2^(i+1)}).
- Coarsest level (H/32): a conv stack halving the width, sigmoid -> depth in (0, 1).
- Each finer level (H/16 ... H/1): upsampled features + encoder skip (none at full
  resolution), then a conv over [features, upsampled previous depth, RGB Laplacian of the
  level] -> conv stack -> residual tanh(conv + 0.1 * mean_c(RGB Laplacian)).
- Reconstruction: depth_i = residual_i + upsample(depth_{i+1}); final = sigmoid(depth_1)
  x max_depth. Loss on the final depth.
Our fine levels see the previous level's reconstructed depth (LapDepth feeds the previous
residual), and the input's reduction conv before the dense ASPP is left out (GhostNet's
160 deepest channels need no reduction).

Widths are tuned to the SG work's reference budget (14.89M params / 14.83 G mult-adds at
416x544): ours stays within 60-100% of both.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from base_learners.blocks import DenseASPP, SeparableConv2d, SeparableConvBNAct, UpFuse
from base_learners.ghostnet import GhostNetDepthLearner, GhostNetEncoder
from base_learners.registry import register
from ensemble_mde.errors import ModelError

ASPP_DILATIONS = (3, 6, 12, 18)
LAPLACIAN_BIAS = 0.1       # LapDepth: tanh(conv + 0.1 * mean of the RGB Laplacian)
COARSE_HALVINGS = 4        # LapDepth decoder1: four halving convs, then a conv to 1
RESIDUAL_HALVINGS = 1
# Tuned to the reference budget: dense-ASPP branch and output widths at H/32, then the
# feature widths of the levels at H/16, H/8, H/4, H/2, H/1.
ASPP_WIDTHS = (512, 1536)
LEVEL_WIDTHS = (512, 256, 192, 160, 96)


def rgb_laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """x [B,3,H,W] (H, W divisible by 2**levels) -> Laplacians at H/1, H/2, ..., H/2**(levels-1),
    each x_i - upsample(x_{i+1}), x_{i+1} = bilinear 0.5x of x_i."""
    downs = [x]
    for _ in range(levels):
        prev = downs[-1]
        downs.append(F.interpolate(prev, size=(prev.shape[-2] // 2, prev.shape[-1] // 2), mode="bilinear",
                                   align_corners=False))
    return [fine - F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
            for fine, coarse in zip(downs[:-1], downs[1:])]


class DepthHead(nn.Sequential):
    """`halvings` separable 3x3 conv + BN + ELU, each halving the width, then a separable
    3x3 conv to one channel (the level's logit or residual before its squashing)."""

    def __init__(self, cin: int, halvings: int):
        super().__init__()
        for _ in range(halvings):
            self.append(SeparableConvBNAct(cin, cin // 2, act=nn.ELU))
            cin //= 2
        self.append(SeparableConv2d(cin, 1))


class LDRNDecoder(nn.Module):
    """Features (+ the normalised rgb for its Laplacian pyramid) -> {"depth": [B,1,H,W] metres}."""

    def __init__(self, aspp_widths: Sequence[int], level_widths: Sequence[int], max_depth: float):
        super().__init__()
        c = GhostNetEncoder.channels
        branch, aspp_out = (int(v) for v in aspp_widths)
        widths = [int(v) for v in level_widths]
        if len(widths) != 5 or min(widths) < 4:
            raise ModelError(f"LDRN level_widths needs 5 values >= 4 (H/16 ... H/1), got {list(level_widths)}",
                             "model.level_widths")
        self.max_depth = float(max_depth)
        self.aspp = DenseASPP(c[4], branch, aspp_out, ASPP_DILATIONS, nn.ELU)
        self.coarse = DepthHead(aspp_out, COARSE_HALVINGS)
        skips = (c[3], c[2], c[1], c[0], 0)
        cins = [aspp_out, *widths[:-1]]
        # extras at each level: skip features, previous depth (1), RGB Laplacian (3)
        self.levels = nn.ModuleList([UpFuse(cin, w, skip + 1 + 3, nn.ELU) for cin, w, skip in zip(cins, widths, skips)])
        self.residuals = nn.ModuleList([DepthHead(w, RESIDUAL_HALVINGS) for w in widths])

    def forward(self, x: torch.Tensor, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        laplacians = rgb_laplacian_pyramid(x, 5)[::-1]        # H/16, H/8, H/4, H/2, H/1
        skips = features[:4][::-1]                            # H/16, H/8, H/4, H/2
        feat = self.aspp(features[4])
        depth = torch.sigmoid(self.coarse(feat))              # H/32, in (0, 1)
        for i, (level, residual, lap) in enumerate(zip(self.levels, self.residuals, laplacians)):
            depth_up = F.interpolate(depth, size=lap.shape[-2:], mode="bilinear", align_corners=False)
            extras = (skips[i], depth_up, lap) if i < len(skips) else (depth_up, lap)
            feat = level(feat, *extras)
            depth = depth_up + torch.tanh(residual(feat) + LAPLACIAN_BIAS * lap.mean(dim=1, keepdim=True))
        return {"depth": torch.sigmoid(depth) * self.max_depth}

    def blocks(self) -> "OrderedDict[str, nn.Module]":
        names = ("lv5", "lv4", "lv3", "lv2", "lv1")  # LapDepth's level numbers: H/16 ... H/1
        return OrderedDict([("aspp", self.aspp), *zip(names, self.levels)])


class LDRN(GhostNetDepthLearner):
    """LapDepth's LDRN with a GhostNet encoder. forward(rgb [B,3,H,W] in [0,1]) ->
    {"depth": [B,1,H,W] metres in (0, max_depth)}."""

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0, aspp_widths: Sequence[int] = ASPP_WIDTHS,
                 level_widths: Sequence[int] = LEVEL_WIDTHS, pretrained_path: str | Path | None = None):
        super().__init__(LDRNDecoder(aspp_widths, level_widths, max_depth), min_depth, max_depth, pretrained_path)


@register("ldrn")
def ldrn(**cfg) -> LDRN:
    return LDRN(**cfg)
