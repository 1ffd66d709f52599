"""BTS, "From Big to Small" (Lee et al., 2019), on a GhostNet encoder, as the SG study built
it (sincostanx/Undergrad-Thesis: models/bts.py, architecture/MOD-BTS.txt; our own
implementation). Decoder width nf = 512; the encoder's 960 channels are projected to 2208.

- Up-convolutions (`UpConv`: separable conv with ReLU / ELU, then nearest 2x) from H/32 to
  H/16 (nf) and H/8 (nf/2), each followed by BatchNorm, concatenated with the encoder skip
  and fused by a separable conv; the deepest feature enters through a ReLU.
- Dense ASPP at H/8 with *full* dilated 3x3 convs (dilations 3, 6, 12, 18, 24): each branch
  is [BN ->] ReLU -> 1x1 conv to nf/2 -> BN -> ReLU -> dilated 3x3 conv to nf/4 and sees the
  concatenation of its predecessors' input and outputs; a separable conv fuses to nf/4.
- Local planar guidance (LPG) at 1/8, 1/4 and 1/2: `reduction_1x1` (1x1 convs + ELU halving
  the width down to 8, then a 1x1 conv to 3) -> theta = sigmoid * pi/3, phi = sigmoid * 2 pi,
  dist = sigmoid * max_depth -> unit normal and distance; each plane covers a k x k block of
  full-resolution pixels with depth n4 / (n1 u + n2 v + n3), u (along the width) and v
  (along the height) = (i - (k-1)/2)/k.
- LPG depths are divided by max_depth; the 1/8 one, nearest-downsampled to 1/4, joins the
  1/4 fusion, the 1/4 one (at 1/2) the 1/2 fusion; at full resolution the upconv features, a
  1x1-reduced sigmoid depth and the three LPG depths are fused by a separable conv, and a
  separable conv with a final sigmoid x max_depth gives the depth.
- BatchNorm outside the separable convs as BTS sets it (momentum 0.01, eps 1.1e-5).

Sizes at 416x544: 8,900,728 parameters (the study's torchinfo summary).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from base_learners.blocks import SeparableConvBN
from base_learners.ghostnet import GhostNetDepthLearner, ghostnet_encoder
from base_learners.registry import register

DEEP_CHANNELS = 2208     # the encoder's 960 -> 2208 projection (DenseNet-161's width in BTS)
NUM_FEATURES = 512       # BTS `bts_size`
ASPP_DILATIONS = (3, 6, 12, 18, 24)
MIN_REDUCTION_WIDTH = 8
BN_MOMENTUM, BN_EPS = 0.01, 1.1e-5


def bts_batchnorm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def separable_relu_elu(cin: int, cout: int) -> SeparableConvBN:
    """BTS's fusing conv in the study: separable, ReLU after the depthwise half, ELU after the pointwise."""
    return SeparableConvBN(cin, cout, act_depthwise=nn.ReLU, act_pointwise=nn.ELU)


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
    normal = torch.cat([torch.sin(theta) * torch.cos(phi), torch.sin(theta) * torch.sin(phi), torch.cos(theta)], dim=1)
    return torch.cat([F.normalize(normal, dim=1), dist], dim=1)


class Reduction1x1(nn.Sequential):
    """BTS `reduction_1x1`: bias-free 1x1 convs + ELU from cin to width, width/2, ... while the
    width is >= 8, then a bias-free 1x1 conv to `cout` (3 plane parameters, or 1)."""

    def __init__(self, cin: int, width: int, cout: int):
        super().__init__()
        while width >= MIN_REDUCTION_WIDTH:
            self.append(nn.Sequential(nn.Conv2d(cin, width, 1, bias=False), nn.ELU()))
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


class UpConv(nn.Module):
    """BTS `upconv` in the study: separable conv (ReLU, ELU) at the low resolution, then
    nearest 2x upsampling. [B,cin,h,w] -> [B,cout,2h,2w]."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = separable_relu_elu(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), scale_factor=2, mode="nearest")


class AtrousBranch(nn.Sequential):
    """One dense-ASPP branch: [BN ->] ReLU -> 1x1 conv to 2*cout -> BN -> ReLU -> dilated full
    3x3 conv to cout (convs bias-free; padding = dilation keeps the size)."""

    def __init__(self, cin: int, cout: int, dilation: int, bn_first: bool = True):
        super().__init__()
        if bn_first:
            self.append(bts_batchnorm(cin))
        self.append(nn.ReLU())
        self.append(nn.Conv2d(cin, 2 * cout, 1, bias=False))
        self.append(nn.BatchNorm2d(2 * cout, momentum=BN_MOMENTUM))
        self.append(nn.ReLU())
        self.append(nn.Conv2d(2 * cout, cout, 3, padding=dilation, dilation=dilation, bias=False))


class BTSDecoder(nn.Module):
    """Features -> {"depth": [B,1,H,W] metres in (0, max_depth)}."""

    def __init__(self, skip_channels: tuple[int, ...], max_depth: float, nf: int = NUM_FEATURES):
        super().__init__()
        c2, c4, c8, c16, c32 = skip_channels
        self.max_depth = float(max_depth)
        self.upconv5, self.bn5 = UpConv(c32, nf), bts_batchnorm(nf)                      # -> 1/16
        self.conv5 = separable_relu_elu(nf + c16, nf)
        self.upconv4, self.bn4 = UpConv(nf, nf // 2), bts_batchnorm(nf // 2)             # -> 1/8
        self.conv4, self.bn4_2 = separable_relu_elu(nf // 2 + c8, nf // 2), bts_batchnorm(nf // 2)
        concat4 = nf // 2 + c8
        self.daspp = nn.ModuleList(
            AtrousBranch(nf // 2 if i == 0 else concat4 + i * (nf // 4), nf // 4, d, bn_first=i > 0)
            for i, d in enumerate(ASPP_DILATIONS))
        self.daspp_conv = separable_relu_elu(nf // 2 + len(ASPP_DILATIONS) * (nf // 4), nf // 4)
        self.lpg8 = LocalPlanarGuidance(nf // 4, nf // 4, 8, self.max_depth)
        self.upconv3, self.bn3 = UpConv(nf // 4, nf // 4), bts_batchnorm(nf // 4)        # -> 1/4
        self.conv3 = separable_relu_elu(nf // 4 + c4 + 1, nf // 4)
        self.lpg4 = LocalPlanarGuidance(nf // 4, nf // 8, 4, self.max_depth)
        self.upconv2, self.bn2 = UpConv(nf // 4, nf // 8), bts_batchnorm(nf // 8)        # -> 1/2
        self.conv2 = separable_relu_elu(nf // 8 + c2 + 1, nf // 8)
        self.lpg2 = LocalPlanarGuidance(nf // 8, nf // 16, 2, self.max_depth)
        self.upconv1 = UpConv(nf // 8, nf // 16)                                          # -> 1/1
        self.reduc1 = Reduction1x1(nf // 16, nf // 32, 1)
        self.conv1 = separable_relu_elu(nf // 16 + 4, nf // 16)
        self.get_depth = SeparableConvBN(nf // 16, 1, act_depthwise=nn.ReLU, act_pointwise=nn.Sigmoid)

    def dense_aspp(self, iconv4: torch.Tensor, concat4: torch.Tensor) -> torch.Tensor:
        """Branch 1 sees iconv4; branch i > 1 sees cat(concat4, outputs 1..i-1)."""
        outputs = [self.daspp[0](iconv4)]
        dense = torch.cat([concat4, outputs[0]], dim=1)
        for branch in self.daspp[1:]:
            outputs.append(branch(dense))
            dense = torch.cat([dense, outputs[-1]], dim=1)
        return self.daspp_conv(torch.cat([iconv4, *outputs], dim=1))

    def forward(self, x: torch.Tensor, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        f2, f4, f8, f16, f32 = features
        scale = 1.0 / self.max_depth
        iconv5 = self.conv5(torch.cat([self.bn5(self.upconv5(torch.relu(f32))), f16], dim=1))
        concat4 = torch.cat([self.bn4(self.upconv4(iconv5)), f8], dim=1)
        daspp = self.dense_aspp(self.bn4_2(self.conv4(concat4)), concat4)
        depth8 = self.lpg8(daspp) * scale                                  # [B,1,H,W], max_depth units
        down8 = F.interpolate(depth8, size=f4.shape[-2:], mode="nearest")
        iconv3 = self.conv3(torch.cat([self.bn3(self.upconv3(daspp)), f4, down8], dim=1))
        depth4 = self.lpg4(iconv3) * scale
        down4 = F.interpolate(depth4, size=f2.shape[-2:], mode="nearest")
        iconv2 = self.conv2(torch.cat([self.bn2(self.upconv2(iconv3)), f2, down4], dim=1))
        depth2 = self.lpg2(iconv2) * scale
        up1 = self.upconv1(iconv2)
        depth1 = torch.sigmoid(self.reduc1(up1))
        iconv1 = self.conv1(torch.cat([up1, depth1, depth2, depth4, depth8], dim=1))
        return {"depth": self.get_depth(iconv1) * self.max_depth}

    def blocks(self) -> "OrderedDict[str, nn.Module]":
        return OrderedDict([("conv5", self.conv5), ("conv4", self.conv4), ("daspp", self.daspp_conv),
                            ("conv3", self.conv3), ("conv2", self.conv2), ("upconv1", self.upconv1),
                            ("conv1", self.conv1)])


class BTS(GhostNetDepthLearner):
    """BTS-G. forward(rgb [B,3,H,W] in [0,1]) -> {"depth": [B,1,H,W] metres}."""

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0, pretrained: bool | str | Path = False):
        encoder = ghostnet_encoder(DEEP_CHANNELS, pretrained)
        super().__init__(encoder, BTSDecoder(encoder.out_channels, max_depth), min_depth, max_depth)


@register("bts")
def bts(**cfg) -> BTS:
    return BTS(**cfg)
