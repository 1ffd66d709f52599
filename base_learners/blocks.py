"""Decoder blocks of the SG study's networks (sincostanx/Undergrad-Thesis, models/layers.py,
unet_adaptive_bins.py, controller.py; our own implementation).

- `SeparableConvBN`: the study's "SeperableConv2d": depthwise k x k conv -> BN -> act, then
  pointwise 1x1 conv -> BN -> act (both convs bias-free; either act may be none).
- `UpConcat`: AdaBins' `UpSampleBN` as the study wrote it: convolve at the low resolution
  (separable, LeakyReLU after both halves), *then* interpolate bilinearly (align_corners=True)
  to the skip's size and concatenate the skip.
- `UNetTrunk`: AdaBins' `DecoderBN` up to its fourth up block: a 1x1 conv (with bias and,
  as in the study's code, padding 1, so the map grows by one pixel each side; the next
  block interpolates to the skip's size), then four `UpConcat` halving the width. The
  AdaBins learner and the meta-learner both sit on it.

Shapes: feature maps [B,C,h,w]. Activations are passed as classes (nn.ReLU, nn.ELU, ...) or None.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_act(conv: nn.Conv2d, act: type[nn.Module] | None) -> nn.Sequential:
    block = nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels))
    if act is not None:
        block.append(act())
    return block


class SeparableConvBN(nn.Module):
    """Depthwise k x k conv -> BN -> act_depthwise, pointwise 1x1 conv cin -> cout -> BN ->
    act_pointwise. Params: cin*k*k + 2*cin + cin*cout + 2*cout."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, act_depthwise: type[nn.Module] | None = nn.ReLU,
                 act_pointwise: type[nn.Module] | None = None):
        super().__init__()
        self.depthwise = _conv_bn_act(nn.Conv2d(cin, cin, kernel_size, padding=kernel_size // 2, groups=cin,
                                                bias=False), act_depthwise)
        self.pointwise = _conv_bn_act(nn.Conv2d(cin, cout, 1, bias=False), act_pointwise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class UpConcat(nn.Module):
    """x [B,cin,h,w], skip [B,c,H,W] -> [B,cout+c,H,W]: separable conv (LeakyReLU, LeakyReLU)
    at (h, w), bilinear interpolation (align_corners=True) to (H, W), concat the skip."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = SeparableConvBN(cin, cout, act_depthwise=nn.LeakyReLU, act_pointwise=nn.LeakyReLU)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.conv(x), size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return torch.cat([up, skip], dim=1)


class UNetTrunk(nn.Module):
    """Features at strides 2..32 with `skip_channels` (c2, c4, c8, c16, c32) -> [B, width/16 + c2,
    H/2, W/2]: 1x1 conv c32 -> width (padding 1), then up blocks to width/2, /4, /8, /16, each
    concatenated with the next shallower skip."""

    def __init__(self, skip_channels: Sequence[int], width: int):
        super().__init__()
        c2, c4, c8, c16, c32 = (int(c) for c in skip_channels)
        self.conv = nn.Conv2d(c32, width, 1, padding=1)
        self.up1 = UpConcat(width, width // 2)
        self.up2 = UpConcat(width // 2 + c16, width // 4)
        self.up3 = UpConcat(width // 4 + c8, width // 8)
        self.up4 = UpConcat(width // 8 + c4, width // 16)
        self.out_channels = width // 16 + c2

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        f2, f4, f8, f16, f32 = features
        return self.up4(self.up3(self.up2(self.up1(self.conv(f32), f16), f8), f4), f2)


# The meta-learner's U-Net blocks (meta_learner/unet.py).
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
