"""The frame the SG study's GhostNet learners share (AdaBins-G, BTS-G, LDRN-G).

Encoder (sincostanx/Undergrad-Thesis, models/encoder.py): the whole timm `ghostnet_100`
through its 160->960 conv, tapped at the end of each stride stage (16, 24, 40, 112, 960
channels at strides 2..32), the 960 channels projected by a 1x1 conv to the learner's width
(AdaBins 2048, BTS 2208, LDRN 1024): `base_learners.encoders.TimmEncoder`.

`GhostNetDepthLearner` adds what every one of them does around its decoder: ImageNet
normalisation, replicate-padding to a multiple of 32, encoder, decoder, bilinear upsampling
(align_corners=True, as the study's loss does it) of a lower-resolution depth to the padded
size, crop back to the input size; SILog loss; `selectable_layers()` = `enc_0..enc_4` (the
tapped stages) then `dec_<block>` in forward order. The padding is ours: the study's decoders
need H and W divisible by 32 (their skips meet after exact 2x upsampling); here any size works.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from base_learners.common import DepthLearner, pad_to_multiple
from base_learners.encoders import TimmEncoder
from ensemble_mde.losses import silog_loss

ENCODER = "ghostnet_100"
INPUT_MULTIPLE = 32


def ghostnet_encoder(deep_channels: int, pretrained: bool | str | Path) -> TimmEncoder:
    """The study's GhostNet encoder with its deepest map projected to `deep_channels`."""
    return TimmEncoder(ENCODER, deep_channels, pretrained=pretrained)


class GhostNetDepthLearner(DepthLearner):
    """GhostNet encoder + a decoder, with the padding, cropping and loss they all share.

    `decoder(x, features) -> {"depth": [B,1,h,w] metres, ...}` receives the normalised,
    padded rgb x [B,3,H',W'] and the five encoder features; depth may be at a lower
    resolution (it is upsampled to H' x W' here, then cropped to H x W). Other outputs
    (e.g. AdaBins' bin_centers [B,N]) pass through. `decoder.blocks()` gives the decoder's
    hookable blocks in forward order.
    """

    def __init__(self, encoder: TimmEncoder, decoder: nn.Module, min_depth: float = 1e-3, max_depth: float = 10.0):
        super().__init__(min_depth, max_depth)
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        """rgb [B,3,H,W] in [0,1] -> {"depth": [B,1,H,W] metres, ...auxiliaries}."""
        x, (h, w) = pad_to_multiple(self.normalize(rgb), INPUT_MULTIPLE)
        outputs = self.decoder(x, self.encoder(x))
        depth = outputs["depth"]
        if depth.shape[-2:] != x.shape[-2:]:
            depth = F.interpolate(depth, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return {**outputs, "depth": self.clamp_depth(depth[..., :h, :w])}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
        """SILog (variance focus 0.85, x10) over valid GT pixels."""
        gt = batch["depth"]
        pred = outputs["depth"]
        if pred.shape[-2:] != gt.shape[-2:]:
            pred = F.interpolate(pred, size=gt.shape[-2:], mode="bilinear", align_corners=True)
        silog = silog_loss(pred, gt, self.valid(gt))
        return {"silog": silog, "total": silog}

    def selectable_layers(self) -> "OrderedDict[str, nn.Module]":
        """`enc_0..enc_4` (the five tapped encoder stages), then `dec_<block>` in forward order."""
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            (f"enc_{i}", module) for i, module in enumerate(self.encoder.stages()))
        layers.update((f"dec_{name}", module) for name, module in self.decoder.blocks().items())
        return layers
