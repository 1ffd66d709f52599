"""BTS, "From Big to Small" (Lee et al., 2019), on a GhostNet encoder, as in the SG
ensemble work: depthwise-separable decoder convolutions, convolution before interpolation.

Facts from the public BTS code (cleinc/bts, pytorch/bts.py; our own implementation):
- Decoder of width nf: up-convolutions from H/32 to H/16 (nf) and H/8 (nf/2), each
  concatenated with the encoder skip and fused by a 3x3 conv; ELU activations.
- Dense ASPP at H/8, dilations 3, 6, 12, 18, 24, each branch seeing the concatenation of
  the input and all earlier branch outputs; branches nf/4 wide; fused to nf/4.
- Local planar guidance (LPG) at 1/8, 1/4 and 1/2: `reduction_1x1` (1x1 convs + ELU,
  halving the width down to 8, then a 1x1 conv to 3) -> theta = sigmoid * pi/3,
  phi = sigmoid * 2 pi, dist = sigmoid * max_depth -> unit normal (sin t cos p, sin t sin p,
  cos t) and dist; each plane covers a k x k block of full-resolution pixels with depth
  n4 / (n1 u + n2 v + n3), u (along the width) and v (along the height) = (i - (k-1)/2)/k.
- LPG depths are divided by max_depth; the 1/8 one, nearest-downsampled to 1/4, joins the
  1/4 fusion, the 1/4 one (at 1/2) joins the 1/2 fusion; at full resolution the upconv
  features, a 1x1-reduced sigmoid depth and the three LPG depths are fused by a 3x3 conv,
  and a final 3x3 conv + sigmoid x max_depth gives the depth.

The decoder widths are tuned to the SG work's reference budget (8.90M params / 12.07 G
mult-adds at 416x544): ours stays within 60-100% of both.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from base_learners.blocks import (ConvBNAct1x1, ConvThenUpsample, DenseASPP, SeparableConv2d, SeparableConvBNAct,
                                  UpFuse)
from base_learners.ghostnet import GhostNetDepthLearner, GhostNetEncoder
from base_learners.registry import register
from ensemble_mde.errors import ModelError

ASPP_DILATIONS = (3, 6, 12, 18, 24)
# Decoder widths at 1/32 (bottleneck), 1/16, 1/8, 1/4 (also the dense-ASPP branches), 1/2, 1/1.
# BTS uses nf, nf/2, nf/4, nf/8, nf/16 from 1/16 down; GhostNet's deepest feature has only 160
# channels, so a 1x1 bottleneck at 1/32 stands in for the wide deepest feature of BTS's
# encoders. Tuned to the reference budget.
WIDTHS = (3072, 1024, 384, 160, 96, 48)
MIN_REDUCTION_WIDTH = 8


def planar_guidance_depth(plane: torch.Tensor, k: int) -> torch.Tensor:
    """Local planar guidance: plane [B,4,h,w] = (n1, n2, n3, n4) per cell -> depth
    [B,1,h*k,w*k]. Full-resolution pixel (y, x) in cell (y//k, x//k) gets
    n4 / (n1 u + n2 v + n3) with u = (x%k - (k-1)/2)/k and v = (y%k - (k-1)/2)/k.
    Units: those of n4 (metres)."""
    h, w = plane.shape[-2:]
    plane = plane.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3)
    offsets = (torch.arange(k, dtype=plane.dtype, device=plane.device) - (k - 1) / 2) / k
    u = offsets.repeat(w).view(1, 1, w * k)
    v = offsets.repeat(h).view(1, h * k, 1)
    n1, n2, n3, n4 = plane.unbind(dim=1)
    return (n4 / (n1 * u + n2 * v + n3)).unsqueeze(1)


def plane_from_params(raw: torch.Tensor, max_depth: float) -> torch.Tensor:
    """raw [B,3,h,w] -> plane [B,4,h,w]: unit normal from theta = sigmoid * pi/3,
    phi = sigmoid * 2 pi, and distance sigmoid * max_depth (metres)."""
    theta = torch.sigmoid(raw[:, 0:1]) * (math.pi / 3)
    phi = torch.sigmoid(raw[:, 1:2]) * (2 * math.pi)
    dist = torch.sigmoid(raw[:, 2:3]) * max_depth
    return torch.cat([torch.sin(theta) * torch.cos(phi), torch.sin(theta) * torch.sin(phi), torch.cos(theta), dist],
                     dim=1)


class Reduction1x1(nn.Sequential):
    """BTS `reduction_1x1`: 1x1 convs + ELU from cin to width, width/2, ... while >= 8,
    then a bias-free 1x1 conv to `cout`."""

    def __init__(self, cin: int, width: int, cout: int):
        super().__init__()
        while width >= MIN_REDUCTION_WIDTH:
            self.append(nn.Conv2d(cin, width, 1, bias=False))
            self.append(nn.ELU())
            cin, width = width, width // 2
        self.append(nn.Conv2d(cin, cout, 1, bias=False))


class LocalPlanarGuidance(nn.Module):
    """Features [B,cin,h,w] -> depth [B,1,h*k,w*k] metres from one local plane per cell."""

    def __init__(self, cin: int, width: int, k: int, max_depth: float):
        super().__init__()
        self.k = k
        self.max_depth = max_depth
        self.reduce = Reduction1x1(cin, width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return planar_guidance_depth(plane_from_params(self.reduce(x), self.max_depth), self.k)


class BTSDecoder(nn.Module):
    """Features -> {"depth": [B,1,H,W] metres in (0, max_depth)}."""

    def __init__(self, widths: Sequence[int], max_depth: float):
        super().__init__()
        c = GhostNetEncoder.channels
        if len(widths) != 6 or min(int(v) for v in widths) < 8:
            raise ModelError(f"BTS widths needs 6 values >= 8 (1/32 bottleneck, 1/16, 1/8, 1/4, 1/2, 1/1), "
                             f"got {list(widths)}", "model.widths")
        w32, w16, w8, w4, w2, w1 = (int(v) for v in widths)
        self.max_depth = float(max_depth)
        act = nn.ELU
        self.bottleneck = ConvBNAct1x1(c[4], w32, act)             # 1/32
        self.up5 = UpFuse(w32, w16, c[3], act)                     # -> 1/16
        self.up4 = UpFuse(w16, w8, c[2], act)                      # -> 1/8
        self.aspp = DenseASPP(w8, w4, w4, ASPP_DILATIONS, act)
        self.lpg8 = LocalPlanarGuidance(w4, w4, 8, self.max_depth)
        self.up3 = UpFuse(w4, w4, c[1] + 1, act)                   # -> 1/4, + LPG 8x8 depth
        self.lpg4 = LocalPlanarGuidance(w4, w2, 4, self.max_depth)
        self.up2 = UpFuse(w4, w2, c[0] + 1, act)                   # -> 1/2, + LPG 4x4 depth
        self.lpg2 = LocalPlanarGuidance(w2, w1, 2, self.max_depth)
        self.up1 = ConvThenUpsample(w2, w1, act)                   # -> 1/1
        self.reduc1 = Reduction1x1(w1, w1 // 2, 1)
        self.iconv1 = SeparableConvBNAct(w1 + 4, w1, act=act)
        self.out = SeparableConv2d(w1, 1)

    def forward(self, x: torch.Tensor, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        f2, f4, f8, f16, f32 = features
        scale = 1.0 / self.max_depth
        iconv4 = self.up4(self.up5(self.bottleneck(f32), f16), f8)
        daspp = self.aspp(iconv4)
        depth8 = self.lpg8(daspp) * scale                           # [B,1,H,W], max_depth units
        iconv3 = self.up3(daspp, f4, F.interpolate(depth8, size=f4.shape[-2:], mode="nearest"))
        depth4 = self.lpg4(iconv3) * scale
        iconv2 = self.up2(iconv3, f2, F.interpolate(depth4, size=f2.shape[-2:], mode="nearest"))
        depth2 = self.lpg2(iconv2) * scale
        up1 = self.up1(iconv2, x.shape[-2:])
        depth1 = torch.sigmoid(self.reduc1(up1))
        iconv1 = self.iconv1(torch.cat([up1, depth1, depth2, depth4, depth8], dim=1))
        return {"depth": torch.sigmoid(self.out(iconv1)) * self.max_depth}

    def blocks(self) -> "OrderedDict[str, nn.Module]":
        return OrderedDict([("bottleneck", self.bottleneck), ("up5", self.up5), ("up4", self.up4), ("aspp", self.aspp),
                            ("up3", self.up3), ("up2", self.up2), ("up1", self.up1), ("iconv1", self.iconv1)])


class BTS(GhostNetDepthLearner):
    """BTS with a GhostNet encoder. forward(rgb [B,3,H,W] in [0,1]) -> {"depth": [B,1,H,W] metres}."""

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0, widths: Sequence[int] = WIDTHS,
                 pretrained_path: str | Path | None = None):
        super().__init__(BTSDecoder(widths, max_depth), min_depth, max_depth, pretrained_path)


@register("bts")
def bts(**cfg) -> BTS:
    return BTS(**cfg)
