"""The GhostNet encoder shared by AdaBins, BTS and LDRN, and the frame around their decoders.

Encoder: timm `ghostnet_100`, `features_only=True`, always `pretrained=False` (nothing is
downloaded). Its five feature maps have 16, 24, 40, 80, 160 channels at strides 2, 4, 8,
16, 32 (timm taps the stem conv and the first block of each stride; the blocks after the
last tap, i.e. the 960-channel head, are not part of the features-only model).
Pretrained weights come only from a local file (`pretrained_path`).

`GhostNetDepthLearner` is the frame every GhostNet learner shares: ImageNet
normalisation, replicate-padding to a multiple of 32, encoder, the learner's decoder,
bilinear upsampling of the depth to the padded size, crop back to the input size; SILog
loss; `selectable_layers()` = `enc_0..enc_4` then `dec_<block>` in forward order.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from base_learners.common import DepthLearner, pad_to_multiple
from ensemble_mde.errors import CheckpointError, ModelError
from ensemble_mde.io import load_checkpoint
from ensemble_mde.losses import silog_loss

GHOSTNET_CHANNELS = (16, 24, 40, 80, 160)
GHOSTNET_REDUCTIONS = (2, 4, 8, 16, 32)
INPUT_MULTIPLE = 32
NESTED_KEYS = ("state_dict", "model")
LISTED_KEYS = 10  # keys named in a weights-mismatch error line


def _features_only_key(key: str) -> str:
    """timm classifier key -> features-only key: `blocks.3.0.x` -> `blocks_3.0.x`."""
    return re.sub(r"^blocks\.(\d+)\.", r"blocks_\1.", key)


def load_ghostnet_weights(body: nn.Module, path: str | Path) -> None:
    """Load a local state_dict of timm's ghostnet_100 (full classifier model or
    features-only keys, plain or nested under "state_dict"/"model") into the
    features-only `body`. Keys the body does not have (head, classifier) are ignored;
    a body key the file lacks, or a shape mismatch, is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"GhostNet pretrained_path {str(path)!r} does not exist", path)
    state = load_checkpoint(path)
    for key in NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise CheckpointError("not a state_dict of timm ghostnet_100", path)
    state = {_features_only_key(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    own = body.state_dict()
    missing = [k for k in own if k not in state]
    mis_shaped = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or mis_shaped:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:LISTED_KEYS])}{' ...' if len(keys) > LISTED_KEYS else ''}"
                 for label, keys in (("missing keys", missing), ("shape mismatch", mis_shaped)) if keys]
        raise CheckpointError(f"weights do not fit timm ghostnet_100: {'; '.join(parts)}", path)
    body.load_state_dict({k: state[k] for k in own})


class GhostNetEncoder(nn.Module):
    """rgb [B,3,H,W] (normalised, H and W multiples of 32) -> five feature maps
    [B,16,H/2,W/2], [B,24,H/4,W/4], [B,40,H/8,W/8], [B,80,H/16,W/16], [B,160,H/32,W/32]."""

    channels = GHOSTNET_CHANNELS

    def __init__(self, pretrained_path: str | Path | None = None):
        super().__init__()
        self.body = timm.create_model("ghostnet_100", features_only=True, pretrained=False)
        info = self.body.feature_info
        if tuple(info.channels()) != GHOSTNET_CHANNELS or tuple(info.reduction()) != GHOSTNET_REDUCTIONS:
            raise ModelError(f"timm ghostnet_100 features are {info.channels()} at strides {info.reduction()}; "
                             f"expected {GHOSTNET_CHANNELS} at {GHOSTNET_REDUCTIONS} (timm version?)", "ghostnet_100")
        if pretrained_path:
            load_ghostnet_weights(self.body, pretrained_path)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)

    def stages(self) -> list[nn.Module]:
        """The five modules whose outputs are the feature maps, shallow to deep."""
        return [self.body.get_submodule(name.replace(".", "_")) for name in self.body.feature_info.module_name()]


class GhostNetDepthLearner(DepthLearner):
    """GhostNet encoder + a decoder, with the padding, cropping and loss they all share.

    `decoder(x, features) -> {"depth": [B,1,h,w] metres, ...}` receives the normalised,
    padded rgb x [B,3,H',W'] and the five encoder features; depth may be at a lower
    resolution (it is upsampled bilinearly to H' x W' here, then cropped to H x W). Other
    outputs (e.g. AdaBins' bin_centers [B,N]) pass through. `decoder.blocks()` gives the
    decoder's hookable blocks in forward order.
    """

    def __init__(self, decoder: nn.Module, min_depth: float = 1e-3, max_depth: float = 10.0,
                 pretrained_path: str | Path | None = None):
        super().__init__(min_depth, max_depth)
        self.encoder = GhostNetEncoder(pretrained_path)
        self.decoder = decoder

    def forward(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        """rgb [B,3,H,W] in [0,1] -> {"depth": [B,1,H,W] metres, ...auxiliaries}."""
        x, (h, w) = pad_to_multiple(self.normalize(rgb), INPUT_MULTIPLE)
        outputs = self.decoder(x, self.encoder(x))
        depth = outputs["depth"]
        if depth.shape[-2:] != x.shape[-2:]:
            depth = F.interpolate(depth, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {**outputs, "depth": self.clamp_depth(depth[..., :h, :w])}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
        """SILog (BTS/AdaBins, variance focus 0.85, x10) over valid GT pixels."""
        gt = batch["depth"]
        pred = outputs["depth"]
        if pred.shape[-2:] != gt.shape[-2:]:
            pred = F.interpolate(pred, size=gt.shape[-2:], mode="bilinear", align_corners=False)
        silog = silog_loss(pred, gt, self.valid(gt))
        return {"silog": silog, "total": silog}

    def selectable_layers(self) -> "OrderedDict[str, nn.Module]":
        """`enc_0..enc_4` (the five encoder feature modules), then `dec_<block>` in forward order."""
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            (f"enc_{i}", module) for i, module in enumerate(self.encoder.stages()))
        layers.update((f"dec_{name}", module) for name, module in self.decoder.blocks().items())
        return layers
