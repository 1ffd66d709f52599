"""LDRN, LapDepth's Laplacian Depth Residual Network (Song et al., TCSVT 2021), on a GhostNet
encoder, as the SG study built it (sincostanx/Undergrad-Thesis: models/lapdepth.py,
architecture/MOD-LDRN.txt; our own implementation). The encoder's 960 channels are projected
to 1024 (= C below).

LapDepth's decoder is kept whole: full 3x3 convolutions with weight standardisation
(`WSConv2d`), each pre-activated by BatchNorm (eps 1e-3) -> ReLU (`PreActConv`); up blocks
interpolate bilinearly (2x) *before* their conv (`PreActUpConv`).
- Dense ASPP (`Dilated_bottleNeck_lv6`) at H/32: a 3x3 reduction C -> C/4, branches 1x1 ->
  dilated 3x3 (dilations 3, 6, 12, 18; C/8 wide), each seeing the reduction and all earlier
  branch outputs, then a 3x3 conv of [reduction, branches] to C/2.
- Level 6 (H/32): a conv stack C/2 -> C/4 -> ... -> C/32 -> 1, sigmoid.
- Levels 5..2 (H/16 .. H/2): up block to the level's width, 1x1 conv over [up, encoder skip]
  to width - 4, a 3x3 conv over [that, the upsampled coarser level, the RGB Laplacian of the
  level], a conv stack down to one channel; residual = tanh(conv + 0.1 * mean_c(Laplacian)).
- Level 1 (H/1): the same without a skip.
- Reconstruction: coarse-to-fine sums of each residual and the upsampled coarser sum;
  final depth = sigmoid(sum) x max_depth. Loss (the study's): SILog on the final depth.
- RGB Laplacians of the (normalised) input: x_i = bilinear 0.5x of x_{i-1};
  level i's Laplacian = x_i - upsample(x_{i+1}) to x_i's size.

Sizes at 416x544: 14,892,724 parameters (the study's torchinfo summary).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from base_learners.ghostnet import GhostNetDepthLearner, ghostnet_encoder
from base_learners.registry import register

DEEP_CHANNELS = 1024     # the encoder's 960 -> 1024 projection (C)
ASPP_DILATIONS = (3, 6, 12, 18)
LAPLACIAN_BIAS = 0.1     # LapDepth: tanh(conv + 0.1 * mean of the RGB Laplacian)
BN_EPS = 1e-3
WS_EPS = 1e-5
# Conv stacks after each level's fusing conv, as widths in units of C: level 6 runs from C/2,
# levels 5, 4, 3, 2 and 1 from their fusing width (the last entry is the 1-channel output).
LEVEL6_STACK = (4, 8, 16, 32)            # C/4, C/8, C/16, C/32, then 1
LEVELS = (                               # (level width in units of C, skip index, stack widths)
    (4, 3, (8, 16)),                     # level 5, H/16: C/4, skip f16, stack C/8, C/16, then 1
    (8, 2, (16,)),                       # level 4, H/8
    (16, 1, ()),                         # level 3, H/4
    (32, 0, ()),                         # level 2, H/2
)


class WSConv2d(nn.Conv2d):
    """Conv2d with weight standardisation: each filter minus its mean, divided by its
    (unbiased) std + 1e-5, at every forward pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        w = w / (w.flatten(1).std(dim=1).view(-1, 1, 1, 1) + WS_EPS)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class PreActConv(nn.Sequential):
    """LapDepth `myConv`: BN -> ReLU -> bias-free WSConv2d k x k (padding k//2 x dilation)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, dilation: int = 1):
        super().__init__(nn.BatchNorm2d(cin, eps=BN_EPS), nn.ReLU(),
                         WSConv2d(cin, cout, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation,
                                  bias=False))


class PreActUpConv(nn.Module):
    """LapDepth `upConvLayer`: BN -> ReLU -> bilinear 2x -> bias-free WSConv2d 3x3."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.conv = WSConv2d(cin, cout, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(torch.relu(self.norm(x)), scale_factor=2, mode="bilinear"))


def conv_stack(cin: int, widths: list[int]) -> nn.Sequential:
    """PreActConv 3x3 through `widths`, then to one channel."""
    layers = []
    for w in [*widths, 1]:
        layers.append(PreActConv(cin, w))
        cin = w
    return nn.Sequential(*layers)


class DenseASPP(nn.Module):
    """LapDepth `Dilated_bottleNeck_lv6` on [B,C,h,w] -> [B,C/2,h,w]."""

    def __init__(self, c: int):
        super().__init__()
        half, branch = c // 4, c // 8
        self.reduction1 = PreActConv(c, half)
        self.branches = nn.ModuleList(
            nn.Sequential(PreActConv(half + i * branch, branch, 1), PreActConv(branch, branch, 3, dilation=d))
            for i, d in enumerate(ASPP_DILATIONS))
        self.reduction2 = PreActConv(half + len(ASPP_DILATIONS) * branch, c // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = self.reduction1(x)
        for branch in self.branches:
            dense = torch.cat([dense, branch(dense)], dim=1)
        return self.reduction2(dense)


class PyramidLevel(nn.Module):
    """One finer level: features [B,cin,h,w] and the coarser level's depth [B,1,h,w] ->
    (features [B,width,2h,2w] for the next level, residual [B,1,2h,2w] in (-1, 1))."""

    def __init__(self, cin: int, width: int, skip_channels: int, stack: list[int]):
        super().__init__()
        self.up = PreActUpConv(cin, width if skip_channels else width - 4)
        self.reduce = PreActConv(width + skip_channels, width - 4, 1) if skip_channels else None
        self.fuse = PreActConv(width, width)
        self.stack = conv_stack(width, stack)

    def forward(self, x: torch.Tensor, coarse: torch.Tensor, laplacian: torch.Tensor,
                skip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.up(x)
        if self.reduce is not None:
            y = self.reduce(torch.cat([y, skip], dim=1))
        coarse_up = F.interpolate(coarse, scale_factor=2, mode="bilinear")
        features = self.fuse(torch.cat([y, coarse_up, laplacian], dim=1))
        residual = torch.tanh(self.stack(features) + LAPLACIAN_BIAS * laplacian.mean(dim=1, keepdim=True))
        return features, residual


def rgb_laplacians(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """x [B,3,H,W] (H, W divisible by 2**levels) -> Laplacians at H/1, H/2, ..., H/2**(levels-1)."""
    downs = [x]
    for _ in range(levels):
        downs.append(F.interpolate(downs[-1], scale_factor=0.5, mode="bilinear"))
    return [fine - F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear")
            for fine, coarse in zip(downs[:-1], downs[1:])]


class LDRNDecoder(nn.Module):
    """Features (+ the normalised rgb for its Laplacian pyramid) -> {"depth": [B,1,H,W] metres}."""

    def __init__(self, skip_channels: tuple[int, ...], max_depth: float):
        super().__init__()
        c = skip_channels[-1]
        self.max_depth = float(max_depth)
        self.aspp = DenseASPP(c)
        self.level6 = conv_stack(c // 2, [c // k for k in LEVEL6_STACK])
        cins = [c // 2] + [c // units for units, _, _ in LEVELS[:-1]]
        self.levels = nn.ModuleList(
            PyramidLevel(cin, c // units, skip_channels[skip], [c // k for k in stack])
            for cin, (units, skip, stack) in zip(cins, LEVELS))
        self.level1 = PyramidLevel(c // 32, c // 32, 0, [c // 64])
        self.skip_indices = [skip for _, skip, _ in LEVELS]

    def forward(self, x: torch.Tensor, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        laplacians = rgb_laplacians(x, 5)                     # H/1 ... H/16
        feat = self.aspp(features[-1])
        depth = torch.sigmoid(self.level6(feat))              # level 6, H/32, in (0, 1)
        coarse = depth
        for level, skip, lap in zip(self.levels, self.skip_indices, laplacians[:0:-1]):
            feat, residual = level(feat, coarse, lap, features[skip])
            coarse = residual
            depth = residual + F.interpolate(depth, scale_factor=2, mode="bilinear")
        _, residual = self.level1(feat, coarse, laplacians[0])
        depth = residual + F.interpolate(depth, scale_factor=2, mode="bilinear")
        return {"depth": torch.sigmoid(depth) * self.max_depth}

    def blocks(self) -> "OrderedDict[str, nn.Module]":
        names = ("lv5", "lv4", "lv3", "lv2")  # LapDepth's level numbers: H/16 ... H/2
        return OrderedDict([("aspp", self.aspp), *((n, lv.fuse) for n, lv in zip(names, self.levels)),
                            ("lv1", self.level1.fuse)])


class LDRN(GhostNetDepthLearner):
    """LDRN-G. forward(rgb [B,3,H,W] in [0,1]) -> {"depth": [B,1,H,W] metres in (0, max_depth)}."""

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0, pretrained: bool | str | Path = False):
        encoder = ghostnet_encoder(DEEP_CHANNELS, pretrained)
        super().__init__(encoder, LDRNDecoder(encoder.out_channels, max_depth), min_depth, max_depth)


@register("ldrn")
def ldrn(**cfg) -> LDRN:
    return LDRN(**cfg)
