"""The SG study's meta-learner: per-pixel weights over K base depths, from the RGB image
and/or the base depths (sincostanx/Undergrad-Thesis models/controller.py, architecture/
MOD_IO-F-G.txt, MOD_I-F-G.txt, MOD_O-F-G.txt, MOD_IO-F-M2.txt, MOD_IO-F-D161.txt; our own
implementation).

- Inputs (`inputs`): "rgb" (the study's i: 3 channels, ImageNet-normalised), "d" (o: the K
  base depths in metres, as the study feeds them) or "rgb+d" (io: 3 + K channels, RGB first).
- Encoder (`encoder`, any timm name): the study's taps (`base_learners.encoders`), the first
  conv widened to the input channels by repeating the RGB filters, the deepest map projected
  to 960 channels when the backbone's differs (MobileNetV2 320, DenseNet-161 2208; GhostNet's
  is 960: the study's code builds an unused 960->960 conv there, left out here).
- Decoder: AdaBins' (`UNetTrunk`, width 960: a 1x1 conv and four up blocks to 60 + c2
  channels at 1/2), a separable conv to 30 channels (LeakyReLU), bilinear upsampling
  (align_corners=True) to the full resolution, a separable conv to K channels.
- Head (`head`): "softmax" gives weights [B,K,H,W] (softmax over learners per pixel: >= 0,
  summing to 1); "relaxed" (the study's `relax_linear_hypothesis`) gives the depth itself:
  ReLU -> 1x1 conv K->1 -> ReLU, + 1e-9 so that it is positive. Its output is not a convex
  blend, so it has no weights. The 1x1 conv starts at weights 1/K and bias RELAXED_INIT_DEPTH
  (our choice; the study used PyTorch's default and dropped the head from its final work):
  with non-negative weights on the ReLU'd scores every pixel starts alive at a depth of a metre
  or so. Under the default init the synthetic cpu study's relaxed run started with most pixels
  below 0 before the last ReLU, no gradient through them, and never learnt (SILog 70 -> 57,
  test RMSE 2.80 m against the average's 0.67, 2026-12-03).

Sizes at 416x544, K = 3 (the study's torchinfo totals): rgb+d on GhostNet 4,266,678
params, rgb or d 4,266,246, MobileNetV2 3,702,458, DenseNet-161 30,298,146. H and W are
replicate-padded to a multiple of 32 inside and cropped back (the study's crops are
multiples of 32; any size works here).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from base_learners.blocks import SeparableConvBN, UNetTrunk
from base_learners.common import IMAGENET_MEAN, IMAGENET_STD, pad_to_multiple
from base_learners.encoders import TimmEncoder
from ensemble_mde.errors import ModelError
from ensemble_mde.runs import STUDY_META_ENCODER

INPUT_KINDS = ("rgb", "d", "rgb+d")
HEADS = ("softmax", "relaxed")
DEFAULT_ENCODER = STUDY_META_ENCODER
DECODER_WIDTH = 960
INPUT_MULTIPLE = 32
RELAXED_EPS = 1e-9
RELAXED_INIT_DEPTH = 1.0  # metres: the relaxed head's output at init, before the scores add to it


def input_channels(inputs: str, num_learners: int) -> int:
    """Channels the encoder sees: rgb 3, d K, rgb+d 3+K."""
    return {"rgb": 3, "d": num_learners, "rgb+d": 3 + num_learners}[inputs]


class WeightingNetwork(nn.Module):
    """forward(rgb [B,3,H,W] in [0,1] | None, base_depths [B,K,H,W] metres | None) ->
    {"weights": [B,K,H,W]} (softmax head) or {"depth": [B,1,H,W] metres} (relaxed head)."""

    def __init__(self, num_learners: int, inputs: str = "rgb+d", encoder: str = DEFAULT_ENCODER,
                 head: str = "softmax", pretrained: bool | str | Path = False):
        super().__init__()
        if inputs not in INPUT_KINDS:
            raise ModelError(f"meta.inputs must be one of {', '.join(INPUT_KINDS)}, got {inputs!r}", "meta.inputs")
        if head not in HEADS:
            raise ModelError(f"meta.head must be one of {', '.join(HEADS)}, got {head!r}", "meta.head")
        if int(num_learners) < 2:
            raise ModelError(f"a stacked ensemble needs at least 2 base learners, got {num_learners}",
                             "meta.num_learners")
        self.num_learners, self.inputs, self.head = int(num_learners), inputs, head
        self.in_channels = input_channels(inputs, self.num_learners)
        self.encoder = TimmEncoder(encoder, DECODER_WIDTH, self.in_channels, pretrained)
        self.trunk = UNetTrunk(self.encoder.out_channels, DECODER_WIDTH)
        self.up5 = SeparableConvBN(self.trunk.out_channels, DECODER_WIDTH // 32, act_depthwise=nn.LeakyReLU,
                                   act_pointwise=nn.LeakyReLU)
        self.conv3 = SeparableConvBN(DECODER_WIDTH // 32, self.num_learners, act_depthwise=nn.ReLU,
                                     act_pointwise=None)
        self.relax = nn.Conv2d(self.num_learners, 1, 1) if head == "relaxed" else None
        if self.relax is not None:
            nn.init.constant_(self.relax.weight, 1.0 / self.num_learners)
            nn.init.constant_(self.relax.bias, RELAXED_INIT_DEPTH)
        self.register_buffer("rgb_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def network_input(self, rgb: torch.Tensor | None, base_depths: torch.Tensor | None) -> torch.Tensor:
        """[B, in_channels, H, W]: ImageNet-normalised RGB and/or the base depths in metres."""
        parts = []
        if self.inputs in ("rgb", "rgb+d"):
            if rgb is None:
                raise ModelError(f"meta inputs {self.inputs!r} need the RGB image", "meta.inputs")
            parts.append((rgb - self.rgb_mean) / self.rgb_std)
        if self.inputs in ("d", "rgb+d"):
            if base_depths is None or base_depths.shape[1] != self.num_learners:
                got = None if base_depths is None else tuple(base_depths.shape)
                raise ModelError(f"meta inputs {self.inputs!r} need base depths [B,{self.num_learners},H,W], "
                                 f"got {got}", "meta.inputs")
            parts.append(base_depths)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def scores(self, rgb: torch.Tensor | None, base_depths: torch.Tensor | None = None) -> torch.Tensor:
        """The last conv's output [B,K,H,W]: softmax logits, or the relaxed head's input."""
        x, (h, w) = pad_to_multiple(self.network_input(rgb, base_depths), INPUT_MULTIPLE)
        features = self.encoder(x)
        y = self.up5(self.trunk(features))
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return self.conv3(y)[..., :h, :w]

    def forward(self, rgb: torch.Tensor | None, base_depths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        scores = self.scores(rgb, base_depths)
        if self.relax is None:
            return {"weights": torch.softmax(scores, dim=1)}
        return {"depth": torch.relu(self.relax(torch.relu(scores))) + RELAXED_EPS}

    def selectable_layers(self) -> "OrderedDict[str, nn.Module]":
        """Encoder stages enc_0..enc_4 (strides 2..32), then the decoder: dec_conv (1/32),
        dec_up1..dec_up4 (1/16 .. 1/2), dec_up5 (1/2), dec_head (full resolution)."""
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            (f"enc_{i}", module) for i, module in enumerate(self.encoder.stages()))
        t = self.trunk
        layers.update([("dec_conv", t.conv), ("dec_up1", t.up1), ("dec_up2", t.up2), ("dec_up3", t.up3),
                       ("dec_up4", t.up4), ("dec_up5", self.up5), ("dec_head", self.conv3)])
        return layers


def build_weighting(cfg: dict, num_learners: int, init_weights: bool = True) -> WeightingNetwork:
    """The meta-learner a run config's `meta:` section describes. init_weights=False: no
    ImageNet weights are fetched (a checkpoint replaces them)."""
    meta = cfg["meta"]
    if "decoder_channels" in meta:
        raise ModelError("meta.decoder_channels: this meta run has the U-Net meta-learner of ensemble-mde before "
                         "the SG study's network; train it again", "meta.decoder_channels")
    return WeightingNetwork(num_learners, inputs=meta["inputs"], encoder=meta["encoder"], head=meta["head"],
                            pretrained=meta["pretrained"] if init_weights else False)


class WeightingOnRgb(nn.Module):
    """The meta-learner alone as a forward(rgb) model, for profiling: its K depth inputs are
    made from the image (a negligible cost), so params and mult-adds are its own."""

    def __init__(self, network: WeightingNetwork, max_depth: float = 10.0):
        super().__init__()
        self.network = network
        self.max_depth = float(max_depth)

    def forward(self, rgb: torch.Tensor) -> dict:
        depths = self.max_depth * rgb[:, :1].expand(-1, self.network.num_learners, -1, -1)
        return self.network(rgb, depths)
