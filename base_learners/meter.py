"""METER (Papa et al., 2023): a MobileViT encoder and a light upsampling decoder, in three
sizes (xxs / xs / s), laid out exactly as the official code (lorenzopapa5/METER,
architecture.py) so that official state_dicts load unchanged.

Facts taken from the official code (our own implementation):
- "SeparableConv2d" there is a *full* 3x3 conv (groups=1) named `depthwise`, then a 1x1
  conv named `pointwise`, both without bias.
- Encoder: conv1 (3x3 "separable", stride 2) -> mv2.0 .. mv2.4 -> mvit.0 -> mv2.5 -> mvit.1
  -> mv2.6 -> mvit.2 -> conv2 (1x1). Skips: mv2.1 (1/4), mv2.4 (1/8), mv2.5 (1/16).
- MobileViT block: 3x3 sep conv -> 1x1 to `dim` -> one pre-LayerNorm transformer layer
  (4 heads x 8, FFN 2*dim in the first block, 4*dim after) over 2x2 patches, attention
  among tokens at the same position inside their patch -> 1x1 back -> concat the block's
  input -> 3x3 sep conv. ReLU everywhere.
- Decoder: 1x1 conv, three blocks of ConvTranspose3x3 s2 -> concat skip -> sep conv ->
  ReLU, then a 3x3 conv to one channel without bias. Native output: 1/4 of the input.
- The official NYU weights output centimetres, the KITTI weights decimetres; this module
  outputs metres (official weights are converted on import: see OFFICIAL_RELEASES).

Input: rgb [B,3,H,W] in [0,1]; ImageNet normalisation happens inside unless
`imagenet_norm=False`. The official weights expect it: on 10 real NYU test frames (640x480,
official split, Eigen crop, 192x256 input) the official METER-XXS code scores RMSE 0.564 /
REL 0.176 / d1 0.730 with RGB/255 normalised by the ImageNet mean/std (the paper's full
test set: 0.580 / 0.174 / 0.744) and 1.068 / 0.203 / 0.647 on plain [0,1] input, so they
are imported with `imagenet_norm: true`. H is replicate-padded to a multiple of 64 (five
stride-2 stages, then 2x2 patches at 1/32), W too unless the official network runs it
unpadded (`input_padding`), as it does KITTI's 636.

Cost at 192x256 (`ensemble profile meter_xxs --size 192x256`): parameters exactly as
published (713,464 / 1,449,760 / 3,295,168). torch.utils.flop_counter gives 0.223 / 0.629 /
1.116 GMACs for xxs / xs / s against the published 0.186 / 0.579 / 0.975: its count of the
convolutions alone is 0.178 / 0.548 / 0.943, the rest is the transformers' linear layers
and attention matmuls.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from base_learners.common import DepthLearner
from base_learners.registry import register
from ensemble_mde.losses import balanced_loss

# variant -> (channels[11], transformer dims[3], MV2 expansion, decoder widths
# (conv2d_in, ups_block_1, ups_block_2, ups_block_3)), from the official architecture.py.
VARIANTS = {
    "xxs": ((16, 16, 24, 24, 48, 48, 64, 64, 80, 80, 160), (64, 80, 96), 2, (64, 32, 16, 8)),
    "xs": ((16, 32, 48, 48, 64, 64, 80, 80, 96, 96, 192), (96, 120, 144), 4, (128, 64, 32, 16)),
    "s": ((16, 32, 64, 64, 96, 96, 128, 128, 160, 160, 320), (144, 192, 240), 4, (128, 64, 32, 16)),
}
INPUT_MULTIPLE = 64
ATTENTION_HEADS = 4
HEAD_DIM = 8
PATCH = 2
# How the official releases (build_model_best_<dataset>_<variant>) differ from this module,
# for `ensemble import-weights`, by the dataset they were trained on: `to_metres` {state_dict
# key: factor} turns their unit into metres (the last conv is linear and bias-free, so
# scaling its weight scales the output); `input_size` [H, W] they were trained and evaluated
# at; `model` the constructor arguments they need; `layer` the packaged config layer of their
# data's protocol (configs/data/kitti.yaml: 80 m, Garg crop), None for NYU (the defaults).
# KITTI input 192x636 (H x W): the KITTI resolution of the METER paper (Papa, Russo, Amerini,
# IEEE TCSVT 2023, arXiv:2403.08368, experimental setup), as public reimplementations of METER
# that quote it also have it (636x192). The official repository (lorenzopapa5/METER) has no data
# loader or `globals.py` (RGB_img_res) to state it, but two facts of it fit: 636 is KITTI's
# 375x1242 frame at METER's height 192 (1242 * 192 / 375 = 635.9), and its decoder pads a skip
# connection by one column, in width only, when the widths differ: 636 gives 159 columns at 1/4
# against 160 upsampled, which neither NYU's 256 nor any height of 192 ever needs.
# Decimetres, not the NYU release's centimetres, decided on the official code: its augmentation
# shifts depth by +-10 "cm/dm" (augmentation.py) and its loss takes SSIM over one range of 1000
# for both datasets (loss.py: 10 m in cm, 80 m in dm). As a check only (not KITTI frames): on the
# real NYU frame of ../shared/data the KITTI weights read a median of 114 (192x256) to 138
# (192x636), 11-14 m as decimetres, 1.1-1.4 m as centimetres.
OFFICIAL_RELEASES = {
    "nyu": {"to_metres": {"decoder.conv2d_out.weight": 0.01}, "input_size": [192, 256],
            "model": {"imagenet_norm": True}, "layer": None},
    "kitti": {"to_metres": {"decoder.conv2d_out.weight": 0.1}, "input_size": [192, 636],
              "model": {"imagenet_norm": True}, "layer": "data/kitti"},
}


class SeparableConv(nn.Module):
    """The official "separable" conv: full 3x3 conv (cin -> cout, groups=1), then 1x1."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.pointwise = nn.Conv2d(cout, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def sep_conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(SeparableConv(cin, cout, stride), nn.BatchNorm2d(cout), nn.ReLU())


def conv1x1_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class MV2Block(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand, 3x3 depthwise (stride), 1x1 project (linear)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class Attention(nn.Module):
    """Multi-head self-attention over x [B, P, N, dim]: tokens N attend within each of
    the P in-patch positions; 4 heads of 8, scale 8**-0.5, bias-free qkv."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        inner = ATTENTION_HEADS * HEAD_DIM
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, p, n, _ = x.shape
        q, k, v = (t.view(b, p, n, ATTENTION_HEADS, HEAD_DIM).transpose(2, 3)
                   for t in self.to_qkv(x).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, P, heads, N, d]
        return self.to_out(out.transpose(2, 3).reshape(b, p, n, ATTENTION_HEADS * HEAD_DIM))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """One pre-LayerNorm layer: x + attn(norm x), then x + ffn(norm x)."""

    def __init__(self, dim: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList([nn.ModuleList([
            PreNorm(dim, Attention(dim, dropout)),
            PreNorm(dim, FeedForward(dim, mlp_dim, dropout)),
        ])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ffn in self.layers:
            x = attn(x) + x
            x = ffn(x) + x
        return x


class MobileViTBlock(nn.Module):
    def __init__(self, dim: int, channels: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.conv1 = sep_conv_bn_relu(channels, channels)
        self.conv2 = conv1x1_bn_relu(channels, dim)
        self.transformer = Transformer(dim, mlp_dim, dropout)
        self.conv3 = conv1x1_bn_relu(dim, channels)
        self.conv4 = sep_conv_bn_relu(2 * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        b, d, h, w = y.shape
        hp, wp = h // PATCH, w // PATCH
        # [B,d,H,W] -> [B, P=2*2 in-patch positions, N=hp*wp patches, d]
        tokens = y.view(b, d, hp, PATCH, wp, PATCH).permute(0, 3, 5, 2, 4, 1).reshape(b, PATCH * PATCH, hp * wp, d)
        tokens = self.transformer(tokens)
        y = tokens.view(b, PATCH, PATCH, hp, wp, d).permute(0, 5, 3, 1, 4, 2).reshape(b, d, h, w)
        return self.conv4(torch.cat((self.conv3(y), x), dim=1))


class Encoder(nn.Module):
    """MobileViT encoder; returns (features at 1/32, skips [1/2, 1/4, 1/8, 1/16])."""

    def __init__(self, channels: tuple[int, ...], dims: tuple[int, ...], expansion: int, dropout: float):
        super().__init__()
        c = channels
        self.conv1 = sep_conv_bn_relu(3, c[0], stride=2)
        self.mv2 = nn.ModuleList([
            MV2Block(c[0], c[1], 1, expansion),
            MV2Block(c[1], c[2], 2, expansion),
            MV2Block(c[2], c[3], 1, expansion),
            MV2Block(c[2], c[3], 1, expansion),
            MV2Block(c[3], c[4], 2, expansion),
            MV2Block(c[5], c[6], 2, expansion),
            MV2Block(c[7], c[8], 2, expansion),
        ])
        self.mvit = nn.ModuleList([
            MobileViTBlock(dims[0], c[5], dims[0] * 2, dropout),
            MobileViTBlock(dims[1], c[7], dims[1] * 4, dropout),
            MobileViTBlock(dims[2], c[9], dims[2] * 4, dropout),
        ])
        self.conv2 = conv1x1_bn_relu(c[-2], c[-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        s2 = self.conv1(x)
        x = self.mv2[0](s2)
        s4 = self.mv2[1](x)
        x = self.mv2[3](self.mv2[2](s4))
        s8 = self.mv2[4](x)
        x = self.mvit[0](s8)
        s16 = self.mv2[5](x)
        x = self.mvit[1](s16)
        x = self.mvit[2](self.mv2[6](x))
        return self.conv2(x), [s2, s4, s8, s16]


def input_padding(height: int, width: int) -> tuple[int, int]:
    """Rows and columns (bottom, right) of replicate padding before the encoder.

    The official network runs any width whose 1/8 map is a multiple of 8 columns (636 -> 80):
    its 1/8, 1/16 and 1/32 maps are then even for the 2x2 patches and exactly twice one
    another, and only the 1/4 skip may be a column or two short (159 at 636), which its
    decoder zero-pads (UpBlock). Padding such a width instead (636 -> 640 replicated) moves
    the official KITTI weights' depth by up to 2.5 m. Other widths, and every height, which
    the official code does not handle, are padded to a multiple of 64.
    """
    pad_rows = (-height) % INPUT_MULTIPLE
    runs_unpadded = -(-width // 8) % 8 == 0
    return pad_rows, 0 if runs_unpadded else (-width) % INPUT_MULTIPLE


class UpBlock(nn.Module):
    """ConvTranspose3x3 stride 2 (exact 2x) -> concat skip -> sep conv -> ReLU. A skip
    narrower than the upsampled map gets zero columns, the first on the left, as the
    official UpSample_layer pads it."""

    def __init__(self, cin: int, cout: int, skip: int):
        super().__init__()
        self.conv2d_transpose = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.end_up_layer = nn.Sequential(SeparableConv(cout + skip, cout), nn.ReLU())

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.conv2d_transpose(x)
        missing = x.shape[-1] - skip.shape[-1]
        if missing:
            skip = F.pad(skip, (missing - missing // 2, missing // 2))
        return self.end_up_layer(torch.cat([x, skip], dim=1))


class Decoder(nn.Module):
    def __init__(self, channels: tuple[int, ...], widths: tuple[int, ...]):
        super().__init__()
        w_in, w1, w2, w3 = widths
        self.conv2d_in = nn.Conv2d(channels[-1], w_in, 1, bias=False)
        self.ups_block_1 = UpBlock(w_in, w1, channels[6])
        self.ups_block_2 = UpBlock(w1, w2, channels[4])
        self.ups_block_3 = UpBlock(w2, w3, channels[2])
        self.conv2d_out = nn.Conv2d(w3, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv2d_in(x)
        x = self.ups_block_1(x, skips[3])
        x = self.ups_block_2(x, skips[2])
        x = self.ups_block_3(x, skips[1])
        return self.conv2d_out(x)


class METER(DepthLearner):
    """METER depth network. forward(rgb [B,3,H,W] in [0,1]) -> {"depth": [B,1,H,W] metres}.

    The network predicts at 1/4 of the (padded) input; the map is upsampled bilinearly 4x
    and cropped to the input resolution. No output activation (as in the official model): the depth is
    clipped to [min_depth, max_depth] (DepthLearner.clamp_depth).
    """

    # Maps cover the input padded to this multiple (selectivity crops the padding out): with
    # an unpadded width (input_padding) the 1/4 map is still 1/4 of the next multiple of 64.
    input_multiple = INPUT_MULTIPLE

    def __init__(self, variant: str = "xxs", min_depth: float = 1e-3, max_depth: float = 10.0, dropout: float = 0.0,
                 imagenet_norm: bool = True):
        super().__init__(min_depth, max_depth)
        if variant not in VARIANTS:
            raise ValueError(f"unknown METER variant {variant!r}; one of {', '.join(VARIANTS)}")
        channels, dims, expansion, widths = VARIANTS[variant]
        self.variant = variant
        self.imagenet_norm = bool(imagenet_norm)
        self.encoder = Encoder(channels, dims, expansion, dropout)
        self.decoder = Decoder(channels, widths)

    def forward(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.normalize(rgb) if self.imagenet_norm else rgb
        h, w = x.shape[-2:]
        pad_rows, pad_cols = input_padding(h, w)
        if pad_rows or pad_cols:
            x = F.pad(x, (0, pad_cols, 0, pad_rows), mode="replicate")
        native = self.decoder(*self.encoder(x))
        depth = F.interpolate(native, scale_factor=4, mode="bilinear", align_corners=False)
        return {"depth": self.clamp_depth(depth[..., :h, :w])}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
        """METER's balanced loss (L1 + 0.5 gradient + normal + SSIM) on valid GT pixels."""
        gt = batch["depth"]
        pred = outputs["depth"]
        if pred.shape[-2:] != gt.shape[-2:]:
            pred = F.interpolate(pred, size=gt.shape[-2:], mode="bilinear", align_corners=False)
        return balanced_loss(pred, gt, self.valid(gt), self.max_depth)

    def selectable_layers(self) -> "OrderedDict[str, nn.Module]":
        """Hookable layers in the order their forward hooks fire."""
        enc, dec = self.encoder, self.decoder
        encoder_order = [enc.conv1, *enc.mv2[:5], enc.mvit[0], enc.mv2[5], enc.mvit[1], enc.mv2[6], enc.mvit[2]]
        layers: OrderedDict[str, nn.Module] = OrderedDict((f"enc_{i}", m) for i, m in enumerate(encoder_order))
        layers["enc_output"] = enc.conv2
        layers["dec_0"] = dec.conv2d_in
        layers["dec_1"] = dec.ups_block_1
        layers["dec_2"] = dec.ups_block_2
        layers["dec_3"] = dec.ups_block_3
        return layers


@register("meter_xxs")
def meter_xxs(**cfg) -> METER:
    return METER("xxs", **cfg)


@register("meter_xs")
def meter_xs(**cfg) -> METER:
    return METER("xs", **cfg)


@register("meter_s")
def meter_s(**cfg) -> METER:
    return METER("s", **cfg)
