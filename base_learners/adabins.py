"""AdaBins (Bhat et al., CVPR 2021) on a GhostNet encoder, as the SG study built it
(sincostanx/Undergrad-Thesis: models/unet_adaptive_bins.py, miniViT.py, layers.py;
architecture/MOD-adabins.txt; our own implementation).

- Encoder: the study's GhostNet, the 960 channels projected to 2048.
- Decoder (`UNetTrunk`, width 2048): a 1x1 conv, four up blocks (separable conv, then
  bilinear interpolation to the skip, concat) to 128 + 16 channels at 1/2 resolution, then a
  separable conv (ReLU after the depthwise half) to 128 channels.
- mini-ViT: 16x16 patch embedding (a conv with kernel = stride = 16) to E=128, learned 1-D
  positional encodings (500 x 128, torch.rand init) added in raster order, 4 post-norm
  transformer encoder layers (torch.nn.TransformerEncoderLayer: 4 heads, FFN 1024, dropout
  0.1, ReLU); token 0 -> MLP 128-256-256-n_bins (LeakyReLU) -> bin widths (ReLU(y) + 0.1,
  normalised, scaled to max - min) -> edges = min + cumsum, centres = midpoints; tokens
  1..128 dot a separable 3x3 conv of the decoder features -> 128 range-attention maps -> 1x1
  conv -> softmax over n_bins; depth = sum_k p_k c_k, at 1/2 resolution.
- Loss: SILog + 0.1 x bidirectional chamfer between bin centres and valid GT depths.

Sizes at 416x544 (`ensemble profile adabins --size 416x544`): every parameter of the
study's code, 17,553,668; its torchinfo summary says 17,225,476 because it leaves out the
positional encodings (64,000) and the attention projections (264,192).

Two changes so that any input size works (both inactive at the study's 416x544 crops, 221
patch tokens, and at 480x640, 300):
- fewer than 129 patch tokens (inputs under about 370x370 pixels): the token sequence is
  zero-padded to 129 before the positional encodings are added, so the padded tokens are
  the learned encodings themselves and give the regression token and the 128 queries;
- more than 500 patch tokens: the 500 encodings are resampled linearly to the sequence length.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from base_learners.blocks import SeparableConvBN, UNetTrunk
from base_learners.ghostnet import GhostNetDepthLearner, ghostnet_encoder
from base_learners.registry import register
from ensemble_mde.losses import bin_chamfer_loss

DEEP_CHANNELS = 2048     # the encoder's 960 -> 2048 projection, and the decoder width
EMBEDDING_DIM = 128      # E, and the decoder's output width (AdaBins: num_classes=128)
N_QUERIES = 128          # range-attention maps
PATCH_SIZE = 16
MAX_TOKENS = 500         # rows of the learned positional encodings
N_HEADS = 4
N_LAYERS = 4
FFN_DIM = 1024
REGRESSOR_HIDDEN = 256
MIN_BIN_WIDTH = 0.1      # AdaBins "linear" bin-width normalisation eps
CHAMFER_WEIGHT = 0.1


class MiniViT(nn.Module):
    """AdaBins' mini-ViT. x [B,E,h,w] (h, w >= 16) -> (bin_centers [B,n_bins] metres,
    strictly increasing in [min_depth, max_depth]; probabilities [B,n_bins,h,w])."""

    def __init__(self, n_bins: int, min_depth: float, max_depth: float, dropout: float):
        super().__init__()
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        e = EMBEDDING_DIM
        self.patch_embed = nn.Conv2d(e, e, PATCH_SIZE, stride=PATCH_SIZE)
        self.positional_encodings = nn.Parameter(torch.rand(MAX_TOKENS, e))
        layer = nn.TransformerEncoderLayer(e, N_HEADS, dim_feedforward=FFN_DIM, dropout=dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, N_LAYERS, enable_nested_tensor=False)
        self.conv3x3 = SeparableConvBN(e, e, act_depthwise=nn.ReLU, act_pointwise=None)
        self.regressor = nn.Sequential(nn.Linear(e, REGRESSOR_HIDDEN), nn.LeakyReLU(),
                                       nn.Linear(REGRESSOR_HIDDEN, REGRESSOR_HIDDEN), nn.LeakyReLU(),
                                       nn.Linear(REGRESSOR_HIDDEN, n_bins))
        self.range_attention = nn.Identity()  # hook point: the 128 range-attention maps
        self.conv_out = nn.Conv2d(N_QUERIES, n_bins, 1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings + positional encodings, [B,S,E] with S >= 1 + N_QUERIES."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)          # [B,S,E], raster order
        s = max(tokens.shape[1], 1 + N_QUERIES)
        tokens = F.pad(tokens, (0, 0, 0, s - tokens.shape[1]))
        pos = self.positional_encodings
        if s > MAX_TOKENS:
            pos = F.interpolate(pos.t()[None], size=s, mode="linear", align_corners=True)[0].t()
        return tokens + pos[:s]

    def bin_centers(self, y: torch.Tensor) -> torch.Tensor:
        """Regressor output y [B,N] -> bin centres [B,N] metres: widths (ReLU(y)+0.1)/sum
        scaled to (max-min), edges = min + cumsum, centres = edge midpoints. In float32 even
        under autocast: bf16 cannot keep 256 centres up to 10 m strictly increasing."""
        widths = torch.relu(y.float()) + MIN_BIN_WIDTH
        widths = (self.max_depth - self.min_depth) * widths / widths.sum(dim=1, keepdim=True)
        edges = self.min_depth + torch.cumsum(F.pad(widths, (1, 0)), dim=1)
        return 0.5 * (edges[:, :-1] + edges[:, 1:])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.transformer(self.tokens(x))
        regression, queries = tokens[:, 0], tokens[:, 1:1 + N_QUERIES]  # [B,E], [B,128,E]
        maps = self.range_attention(torch.einsum("behw,bqe->bqhw", self.conv3x3(x), queries))
        probabilities = torch.softmax(self.conv_out(maps), dim=1)
        return self.bin_centers(self.regressor(regression)), probabilities


class AdaBinsDecoder(nn.Module):
    """Features -> {"depth": [B,1,H/2,W/2] metres, "bin_centers": [B,n_bins] metres}."""

    def __init__(self, skip_channels: tuple[int, ...], n_bins: int, min_depth: float, max_depth: float,
                 dropout: float):
        super().__init__()
        self.trunk = UNetTrunk(skip_channels, DEEP_CHANNELS)
        self.head = SeparableConvBN(self.trunk.out_channels, EMBEDDING_DIM, act_depthwise=nn.ReLU, act_pointwise=None)
        self.vit = MiniViT(n_bins, min_depth, max_depth, dropout)

    def forward(self, x: torch.Tensor, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        centers, probabilities = self.vit(self.head(self.trunk(features)))
        depth = (probabilities * centers[:, :, None, None]).sum(dim=1, keepdim=True)
        return {"depth": depth, "bin_centers": centers}

    def blocks(self) -> "OrderedDict[str, nn.Module]":
        t = self.trunk
        return OrderedDict([("conv", t.conv), ("up1", t.up1), ("up2", t.up2), ("up3", t.up3), ("up4", t.up4),
                            ("head", self.head), ("range_attention", self.vit.range_attention)])


class AdaBins(GhostNetDepthLearner):
    """AdaBins-G. forward(rgb [B,3,H,W] in [0,1]) -> {"depth": [B,1,H,W] metres,
    "bin_centers": [B,n_bins] metres (increasing)}."""

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0, n_bins: int = 256, dropout: float = 0.1,
                 chamfer_weight: float = CHAMFER_WEIGHT, pretrained: bool | str | Path = False):
        encoder = ghostnet_encoder(DEEP_CHANNELS, pretrained)
        decoder = AdaBinsDecoder(encoder.out_channels, int(n_bins), min_depth, max_depth, float(dropout))
        super().__init__(encoder, decoder, min_depth, max_depth)
        self.chamfer_weight = float(chamfer_weight)

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
        """SILog + chamfer_weight x bin-centre chamfer (AdaBins: 0.1)."""
        terms = super().loss(outputs, batch)
        gt = batch["depth"]
        chamfer = bin_chamfer_loss(outputs["bin_centers"], gt, self.valid(gt))
        return {"silog": terms["silog"], "chamfer": chamfer, "total": terms["silog"] + self.chamfer_weight * chamfer}


@register("adabins")
def adabins(**cfg) -> AdaBins:
    return AdaBins(**cfg)
