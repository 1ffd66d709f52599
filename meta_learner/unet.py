"""The weighting network: a light U-Net that looks at the RGB image and/or the K base depth
maps and outputs, per pixel, a softmax weight for every base learner.

Encoder: a timm backbone through segmentation-models-pytorch's universal timm encoder
(`tu-ghostnet_100` by default: channels 16, 24, 40, 80, 160 at strides 2..32), random
init or ImageNet weights from a local file (`pretrained_path`, never downloaded). Decoder: a U-Net whose
blocks use depthwise-separable convolutions and convolve at the coarse resolution before
upsampling (the SG work's two changes for size and speed); a context block of two full
3x3 convolutions at 1/32 holds most of the decoder's parameters where pixels are few.
Three decoder widths (the default) end at stride 4, four at stride 2, five at stride 1 (the
input is the last skip; the closest to the SG work's reference size). Below stride 1 the
weight logits are upsampled bilinearly to the input resolution before the softmax; the base
depths keep their full resolution in the blend. Stride 4 trains and runs about 15% faster
than stride 2 on CPU for the same synthetic test RMSE, at depth edges too
(benchmarks/NOTES.md).

Inputs (`inputs`): "rgb" (3 channels, ImageNet-normalised inside), "d" (K base depths
divided by max_depth) or "rgb+d" (3 + K, RGB first). Any input size: replicate-padded to a
multiple of 32 inside, cropped back.

Budget at 416x544, K=3, inputs rgb+d, the defaults (torch.utils.flop_counter, mult-adds =
flops/2; the SG work: 4.27M params / 1.66 G): see tests/test_meta_learner.py.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from torch import nn

from base_learners.blocks import UpFuse
from base_learners.common import IMAGENET_MEAN, IMAGENET_STD, pad_to_multiple
from base_learners.encoders import read_state_dict
from ensemble_mde.errors import CheckpointError, ModelError

INPUT_KINDS = ("rgb", "d", "rgb+d")
INPUT_MULTIPLE = 32      # five stride-2 stages
ENCODER_DEPTH = 5
DEFAULT_ENCODER = "tu-ghostnet_100"
DEFAULT_CENTER_CHANNELS = 512
DEFAULT_DECODER_CHANNELS = (128, 64, 32)   # outputs at strides 16, 8, 4; logits upsampled to 1/1


def input_channels(inputs: str, num_learners: int) -> int:
    """Channels the encoder sees: rgb 3, d K, rgb+d 3+K."""
    return {"rgb": 3, "d": num_learners, "rgb+d": 3 + num_learners}[inputs]


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """Full 3x3 convolution, BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class WeightingUNet(nn.Module):
    """Per-pixel weights over K base learners: forward(rgb [B,3,H,W] in [0,1], base_depths
    [B,K,H,W] metres) -> weights [B,K,H,W], >= 0, summing to 1 over K at every pixel.

    The head is zero-initialised, so a fresh network outputs 1/K everywhere: the ensemble
    starts as the simple average of its bases.
    """

    def __init__(self, num_learners: int, inputs: str = "rgb+d", encoder_name: str = DEFAULT_ENCODER,
                 center_channels: int = DEFAULT_CENTER_CHANNELS,
                 decoder_channels: tuple[int, ...] | list[int] = DEFAULT_DECODER_CHANNELS,
                 max_depth: float = 10.0, pretrained: str | Path | bool = False):
        super().__init__()
        if inputs not in INPUT_KINDS:
            raise ModelError(f"meta inputs must be one of {', '.join(INPUT_KINDS)}, got {inputs!r}", "meta.inputs")
        if int(num_learners) < 2:
            raise ModelError(f"a stacked ensemble needs at least 2 base learners, got {num_learners}",
                             "meta.num_learners")
        if len(decoder_channels) not in (ENCODER_DEPTH - 2, ENCODER_DEPTH - 1, ENCODER_DEPTH):
            raise ModelError(f"decoder_channels needs {ENCODER_DEPTH} widths (strides 16, 8, 4, 2, 1), "
                             f"{ENCODER_DEPTH - 1} (16, 8, 4, 2) or {ENCODER_DEPTH - 2} (16, 8, 4), "
                             f"got {list(decoder_channels)}", "meta.decoder_channels")
        if not encoder_name.startswith("tu-"):
            raise ModelError(f"encoder_name must name a timm backbone as 'tu-<timm name>', got {encoder_name!r}",
                             "meta.encoder_name")
        self.num_learners = int(num_learners)
        self.inputs = inputs
        self.max_depth = float(max_depth)
        self.in_channels = input_channels(inputs, self.num_learners)
        self.timm_name = encoder_name[len("tu-"):]
        try:
            self.encoder = smp.encoders.get_encoder(encoder_name, in_channels=self.in_channels,
                                                    depth=ENCODER_DEPTH, weights=None)
        except (RuntimeError, ValueError, KeyError) as e:
            raise ModelError(f"cannot build encoder {encoder_name!r}: {e}", "meta.encoder_name") from None
        skips = list(self.encoder.out_channels)            # [in_channels, s2, s4, s8, s16, s32]
        self.center = nn.Sequential(conv_bn_relu(skips[-1], center_channels),
                                    conv_bn_relu(center_channels, center_channels))
        widths = [center_channels, *decoder_channels]
        self.decoder = nn.ModuleList(
            UpFuse(widths[i], widths[i + 1], extra_ch=skips[-2 - i]) for i in range(len(decoder_channels)))
        self.head = nn.Conv2d(widths[-1], self.num_learners, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("rgb_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if pretrained:
            self.load_encoder_weights(pretrained)

    def network_input(self, rgb: torch.Tensor | None, base_depths: torch.Tensor | None) -> torch.Tensor:
        """[B, in_channels, H, W]: normalised RGB and/or depths / max_depth."""
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
            parts.append(base_depths / self.max_depth)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def logits(self, rgb: torch.Tensor | None, base_depths: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised scores [B,K,H,W] (softmax over K gives the weights)."""
        x, (h, w) = pad_to_multiple(self.network_input(rgb, base_depths), INPUT_MULTIPLE)
        x = x.contiguous(memory_format=self.input_memory_format())   # x is also the stride-1 skip
        features = self.encoder(x)                 # [x, s2, s4, s8, s16, s32]
        y = self.center(features[-1])
        for block, skip in zip(self.decoder, reversed(features[:-1])):
            y = block(y, skip)
        logits = self.head(y)
        if logits.shape[-2:] != x.shape[-2:]:     # three or four decoder blocks: logits at stride 4 or 2
            # K channels: the contiguous layout upsamples (and softmaxes) K maps 1.7x faster on
            # CPU than channels_last, which interleaves only K values per pixel
            logits = F.interpolate(logits.contiguous(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]

    def input_memory_format(self) -> torch.memory_format:
        """The layout of the first convolution's weights (channels_last on the fast path): with
        five decoder widths the input skip joins the full-resolution decoder block, where a
        layout mismatch costs a transposing copy of the widest tensor (6.6 ms of 39 at 416x544
        on CPU)."""
        first = next(p for p in self.encoder.parameters() if p.ndim == 4)
        return torch.channels_last if first.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format

    def forward(self, rgb: torch.Tensor | None, base_depths: torch.Tensor | None = None) -> torch.Tensor:
        return torch.softmax(self.logits(rgb, base_depths), dim=1)

    def selectable_layers(self) -> "OrderedDict[str, nn.Module]":
        """Encoder stages enc_0..enc_4 (strides 2..32), center (1/32), dec_0.. (strides 16, 8, 4, 2[, 1])."""
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        timm_model = self.encoder.model
        for i, name in enumerate(timm_model.feature_info.module_name()):
            layers[f"enc_{i}"] = timm_model.get_submodule(name.replace(".", "_"))
        layers["center"] = self.center
        for i, block in enumerate(self.decoder):
            layers[f"dec_{i}"] = block
        return layers

    def load_encoder_weights(self, path: str | Path) -> None:
        """Load a local timm checkpoint of the encoder's backbone (e.g. ImageNet ghostnet_100;
        the classifier is ignored). The RGB first conv is widened to this network's inputs:
        RGB filters stay, each depth channel gets the mean RGB filter."""
        rgb_body = timm.create_model(self.timm_name, features_only=True, pretrained=False)
        state = {re.sub(r"^blocks\.(\d+)\.", r"blocks_\1.", k): v for k, v in read_state_dict(Path(path)).items()}
        own = rgb_body.state_dict()
        missing = [k for k in own if k not in state or state[k].shape != own[k].shape]
        if missing:
            raise CheckpointError(f"weights do not fit timm {self.timm_name}: missing or mis-shaped {missing[:4]}", path)
        state = {k: state[k] for k in own}
        first = next(k for k, v in state.items() if v.ndim == 4)
        rgb_filters = state[first]
        depth_filters = rgb_filters.mean(dim=1, keepdim=True).expand(-1, self.num_learners, -1, -1)
        state[first] = {"rgb": rgb_filters, "d": depth_filters,
                        "rgb+d": torch.cat([rgb_filters, depth_filters], dim=1)}[self.inputs].contiguous()
        self.encoder.model.load_state_dict(state)


class WeightingUNetOnRgb(nn.Module):
    """The U-Net alone as a forward(rgb) model, for profiling: its K depth inputs are made
    from the image (a negligible cost), so params and mult-adds are the U-Net's own."""

    def __init__(self, unet: WeightingUNet):
        super().__init__()
        self.unet = unet

    def forward(self, rgb: torch.Tensor) -> dict:
        depths = self.unet.max_depth * rgb[:, :1].expand(-1, self.unet.num_learners, -1, -1)
        return {"weights": self.unet(rgb, depths)}
