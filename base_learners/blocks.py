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
