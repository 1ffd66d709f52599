"""AdaBins (Bhat et al., CVPR 2021) on a GhostNet encoder, as in the SG ensemble work:
depthwise-separable decoder convolutions, convolution before interpolation.

Facts from the public AdaBins code (shariqfarooq123/AdaBins, models/unet_adaptive_bins.py,
models/miniViT.py, models/layers.py; our own implementation):
- U-Net decoder: a 1x1 bottleneck on the deepest feature, four up blocks with skips
  (upsample, concat skip, two conv-BN-LeakyReLU), then a conv to 128 channels at 1/2 of
  the input resolution.
- mini-ViT: 16x16 patch embedding (a conv with kernel = stride = 16) to E=128, learned
  positional encodings, 4 post-norm transformer encoder layers (4 heads, FFN 1024,
  dropout 0.1, ReLU); output token 0 -> MLP 128-256-256-n_bins (LeakyReLU) -> bin widths
  (ReLU(y) + 0.1, normalised to sum 1, scaled to max-min); tokens 1..128 -> dot product
  with a 3x3 conv of the decoder features -> 128 range-attention maps -> 1x1 conv ->
  softmax over n_bins; edges = min + cumsum(widths); depth = sum_k p_k * centre_k.
- Loss: SILog + 0.1 x chamfer(bin centres, valid GT depths).

Deviation (so that any input size works): AdaBins reads token 0 and tokens 1..128 off the
first 129 *patch* tokens, which needs at least 129 patches (an input of at least ~370x370
pixels). Here 129 learned tokens (one regression token, 128 query tokens) are prepended
to the patch tokens; they gather image content by attention in the same 4 layers and are
read out as token 0 and tokens 1..128. The patch tokens' positional encodings are a
learned 2-D grid (of the 416x544 training crop) interpolated bilinearly to the actual
patch grid.

Widths are tuned to the SG work's reference budget (17.23M params / 9.57 G mult-adds at
416x544): ours must stay within 60-100% of both (see tests/test_base_learners.py).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from base_learners.blocks import ConvBNAct1x1, SeparableConv2d, SeparableConvBNAct, UpFuse
from base_learners.ghostnet import GhostNetDepthLearner, GhostNetEncoder
from base_learners.registry import register
from ensemble_mde.errors import ModelError
from ensemble_mde.losses import bin_chamfer_loss

EMBEDDING_DIM = 128      # E, and the decoder's output width (AdaBins: num_classes=128)
N_QUERIES = 128          # range-attention maps
PATCH_SIZE = 16
N_HEADS = 4
N_LAYERS = 4
FFN_DIM = 1024
REGRESSOR_HIDDEN = 256
MIN_BIN_WIDTH = 0.1      # AdaBins "linear" bin-width normalisation eps
CHAMFER_WEIGHT = 0.1
# Positional-encoding grid: the patch grid of the 416x544 training crop (decoder at 1/2, 16x16 patches).
POS_GRID = (416 // 2 // PATCH_SIZE, 544 // 2 // PATCH_SIZE)
# Decoder widths: bottleneck (1/32), up blocks at 1/16, 1/8, 1/4, 1/2. Tuned to the reference budget.
DECODER_WIDTHS = (5120, 768, 256, 96, 48)


class TransformerEncoderLayer(nn.Module):
    """Post-norm transformer layer (as torch.nn.TransformerEncoderLayer, which AdaBins uses):
    x = LN(x + MHSA(x)); x = LN(x + FFN(x)). x [B,S,E]."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, e = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        x = self.norm1(x + self.dropout(self.proj(attn.transpose(1, 2).reshape(b, s, e))))
        return self.norm2(x + self.dropout(self.ffn(x)))


class MiniViT(nn.Module):
    """AdaBins' mini-ViT. x [B,E,h,w] (h, w multiples of 16) -> (bin_centers [B,n_bins]
    metres, strictly increasing in [min_depth, max_depth]; probabilities [B,n_bins,h,w])."""

    def __init__(self, n_bins: int, min_depth: float, max_depth: float, dropout: float):
        super().__init__()
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        e = EMBEDDING_DIM
        self.patch_embed = nn.Conv2d(e, e, PATCH_SIZE, stride=PATCH_SIZE)
        self.pos_grid = nn.Parameter(torch.rand(1, e, *POS_GRID))  # AdaBins: torch.rand init
        self.readout_tokens = nn.Parameter(torch.randn(1, 1 + N_QUERIES, e) * 0.02)
        self.layers = nn.ModuleList([TransformerEncoderLayer(e, N_HEADS, FFN_DIM, dropout) for _ in range(N_LAYERS)])
        self.conv3x3 = SeparableConv2d(e, e)
        self.regressor = nn.Sequential(nn.Linear(e, REGRESSOR_HIDDEN), nn.LeakyReLU(),
                                       nn.Linear(REGRESSOR_HIDDEN, REGRESSOR_HIDDEN), nn.LeakyReLU(),
                                       nn.Linear(REGRESSOR_HIDDEN, n_bins))
        self.range_attention = nn.Identity()  # hook point: the 128 range-attention maps
        self.conv_out = nn.Conv2d(N_QUERIES, n_bins, 1)

    def bin_centers(self, y: torch.Tensor) -> torch.Tensor:
        """Regressor output y [B,N] -> bin centres [B,N] metres: widths (ReLU(y)+0.1)/sum
        scaled to (max-min), edges = min + cumsum, centres = edge midpoints. In float32 even
        under autocast: bf16 cannot keep 256 centres up to 10 m strictly increasing."""
        widths = torch.relu(y.float()) + MIN_BIN_WIDTH
        widths = (self.max_depth - self.min_depth) * widths / widths.sum(dim=1, keepdim=True)
        edges = self.min_depth + torch.cumsum(F.pad(widths, (1, 0)), dim=1)
        return 0.5 * (edges[:, :-1] + edges[:, 1:])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        patches = self.patch_embed(x)                                   # [B,E,h/16,w/16]
        pos = F.interpolate(self.pos_grid, size=patches.shape[-2:], mode="bilinear", align_corners=False)
        tokens = (patches + pos).flatten(2).transpose(1, 2)             # [B,S,E]
        tokens = torch.cat([self.readout_tokens.expand(b, -1, -1), tokens], dim=1)
        for layer in self.layers:
            tokens = layer(tokens)
        regression, queries = tokens[:, 0], tokens[:, 1:1 + N_QUERIES]  # [B,E], [B,128,E]
        maps = self.range_attention(torch.einsum("behw,bqe->bqhw", self.conv3x3(x), queries))
        probabilities = torch.softmax(self.conv_out(maps), dim=1)
        return self.bin_centers(self.regressor(regression)), probabilities


class AdaBinsDecoder(nn.Module):
    """Features -> {"depth": [B,1,H/2,W/2] metres, "bin_centers": [B,n_bins] metres}."""

    def __init__(self, widths: Sequence[int], n_bins: int, min_depth: float, max_depth: float, dropout: float):
        super().__init__()
        c = GhostNetEncoder.channels
        w = [int(v) for v in widths]
        if len(w) != 5:
            raise ModelError(f"AdaBins decoder_widths needs 5 values (1/32, 1/16, 1/8, 1/4, 1/2), got {len(w)}",
                             "model.decoder_widths")
        act = nn.LeakyReLU
        self.bottleneck = ConvBNAct1x1(c[4], w[0], act)
        self.up1 = UpFuse(w[0], w[1], c[3], act)
        self.up2 = UpFuse(w[1], w[2], c[2], act)
        self.up3 = UpFuse(w[2], w[3], c[1], act)
        self.up4 = UpFuse(w[3], w[4], c[0], act)
        self.head = SeparableConvBNAct(w[4], EMBEDDING_DIM, act=act)
        self.vit = MiniViT(n_bins, min_depth, max_depth, dropout)

    def forward(self, x: torch.Tensor, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        f2, f4, f8, f16, f32 = features
        y = self.up4(self.up3(self.up2(self.up1(self.bottleneck(f32), f16), f8), f4), f2)
        centers, probabilities = self.vit(self.head(y))
        depth = (probabilities * centers[:, :, None, None]).sum(dim=1, keepdim=True)
        return {"depth": depth, "bin_centers": centers}

    def blocks(self) -> "OrderedDict[str, nn.Module]":
        return OrderedDict([("bottleneck", self.bottleneck), ("up1", self.up1), ("up2", self.up2),
                            ("up3", self.up3), ("up4", self.up4), ("head", self.head),
                            ("range_attention", self.vit.range_attention)])


class AdaBins(GhostNetDepthLearner):
    """AdaBins with a GhostNet encoder. forward(rgb [B,3,H,W] in [0,1]) ->
    {"depth": [B,1,H,W] metres, "bin_centers": [B,n_bins] metres (increasing)}."""

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0, n_bins: int = 256,
                 decoder_widths: Sequence[int] = DECODER_WIDTHS, dropout: float = 0.1,
                 chamfer_weight: float = CHAMFER_WEIGHT, pretrained_path: str | Path | None = None):
        decoder = AdaBinsDecoder(decoder_widths, int(n_bins), min_depth, max_depth, float(dropout))
        super().__init__(decoder, min_depth, max_depth, pretrained_path)
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
