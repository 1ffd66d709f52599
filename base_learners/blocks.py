"""Decoder building blocks shared by the GhostNet learners (AdaBins, BTS, LDRN).

The SG work's two changes to the public decoders, for size and speed (DESIGN.md §5):
- every k x k convolution is depthwise-separable (depthwise k x k, then pointwise 1x1);
- upsampling blocks convolve at the low resolution first and interpolate afterwards
  (`ConvThenUpsample`), instead of interpolating and then convolving at the high one.

Shapes: feature maps [B,C,h,w]. Activations are passed as classes (nn.ReLU, nn.ELU, ...).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SeparableConv2d(nn.Sequential):
    """Depthwise k x k conv (groups=cin, optional dilation, 'same' padding), then a
    pointwise 1x1 conv cin -> cout. Params: cin*k*k + cin*cout (+ cout bias)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, dilation: int = 1, bias: bool = True):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation,
                                   groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=bias)


class SeparableConvBNAct(nn.Sequential):
    """SeparableConv2d (no bias) -> BatchNorm -> activation."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, dilation: int = 1, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.conv = SeparableConv2d(cin, cout, kernel_size, dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = act()


class ConvBNAct1x1(nn.Sequential):
    """Pointwise conv (no bias) -> BatchNorm -> activation."""

    def __init__(self, cin: int, cout: int, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = act()


class ConvThenUpsample(nn.Module):
    """Separable 3x3 conv + BN + act at the input's (low) resolution, then bilinear
    interpolation to `size`: x [B,cin,h,w] -> [B,cout,*size]."""

    def __init__(self, cin: int, cout: int, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.conv = SeparableConvBNAct(cin, cout, act=act)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        x = self.conv(x)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return x


class UpFuse(nn.Module):
    """One decoder step: `ConvThenUpsample` x to the resolution of the first extra map,
    concatenate [up, *extras] (skip features, depth maps, ...), fuse with a separable 3x3
    conv + BN + act.

    x [B,cin,h,w], extras [B,c_i,H,W] with sum(c_i) = extra_ch  ->  [B,cout,H,W].
    """

    def __init__(self, cin: int, cout: int, extra_ch: int, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.up = ConvThenUpsample(cin, cout, act)
        self.fuse = SeparableConvBNAct(cout + extra_ch, cout, act=act)

    def forward(self, x: torch.Tensor, *extras: torch.Tensor) -> torch.Tensor:
        up = self.up(x, extras[0].shape[-2:])
        return self.fuse(torch.cat([up, *extras], dim=1))


class DenseASPP(nn.Module):
    """Dense atrous spatial pyramid pooling, as BTS (`daspp_*`) and LapDepth
    (`Dilated_bottleNeck`) use it: branch i sees cat(x, out_1, ..., out_{i-1}); each branch
    is a 1x1 conv to `branch_ch` then a dilated separable 3x3 conv (dilation d_i); a
    separable 3x3 conv fuses cat(x, out_1..out_n) to `cout`.

    x [B,cin,h,w] -> [B,cout,h,w]. Padding equals the dilation, so any h, w works.
    """

    def __init__(self, cin: int, branch_ch: int, cout: int, dilations: Sequence[int],
                 act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        self.branches = nn.ModuleList([
            nn.Sequential(ConvBNAct1x1(cin + i * branch_ch, branch_ch, act),
                          SeparableConvBNAct(branch_ch, branch_ch, dilation=d, act=act))
            for i, d in enumerate(self.dilations)
        ])
        self.fuse = SeparableConvBNAct(cin + len(self.dilations) * branch_ch, cout, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = x
        for branch in self.branches:
            dense = torch.cat([dense, branch(dense)], dim=1)
        return self.fuse(dense)
