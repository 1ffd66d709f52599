"""timm encoders as the SG study taps them, and ImageNet weights the timm way.

The study (sincostanx/Undergrad-Thesis, models/encoder.py) runs a whole ImageNet classifier
up to its last feature map and keeps the output of the *last* module of each stride stage,
then projects the deepest map with a 1x1 conv (with bias) to the width its decoder wants.
Our taps, as plain data, for the three backbones it used (timm names; the networks are the
same as the study's torch-hub / torchvision ones):

- ghostnet_100: blocks 0, 2, 4, 6, 9 -> 16, 24, 40, 112, 960 channels (timm's
  `features_only` taps the first block of each stride instead: 16/24/40/80/160, and stops
  after blocks.7).
- mobilenetv2_100: blocks 0, 1, 2, 3 (the last 64-channel block) and 6 -> 16, 24, 32, 64, 320.
- densenet161: norm0, pool0, transition1, transition2, norm5 -> 96, 96, 192, 384, 2208.
  timm's norm0 and norm5 include their ReLU (torchvision's, which the study tapped, do not):
  the same parameters, the taps read after the activation.

Any other timm name falls back to timm's own feature taps (the last module at each of the
strides 2, 4, 8, 16, 32). An input wider than RGB (the meta-learner's depth channels) gets a
widened first conv whose filters repeat the RGB filters cyclically (the study's
`modify_input`; no rescaling).

Weights (`pretrained`): True = timm's default ImageNet weights through its Hugging Face hub
mechanism (downloaded once, then read from the cache; `HF_HUB_OFFLINE=1` is honoured);
a path = a local `.safetensors` / `.pth` / `.pt` state_dict of that timm model, the full
classifier or its feature part; False = random init.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path

import timm
import torch
from torch import nn

from ensemble_mde.errors import CheckpointError, ModelError
from ensemble_mde.io import load_checkpoint

# timm name -> modules run in order, the five tapped modules (strides 2, 4, 8, 16, 32), their channels.
STUDY_TAPS = {
    "ghostnet_100": {
        "sequence": ("conv_stem", "bn1", "act1", *(f"blocks.{i}" for i in range(10))),
        "taps": ("blocks.0", "blocks.2", "blocks.4", "blocks.6", "blocks.9"),
        "channels": (16, 24, 40, 112, 960),
    },
    "mobilenetv2_100": {
        "sequence": ("conv_stem", "bn1", *(f"blocks.{i}" for i in range(7))),
        "taps": ("blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.6"),
        "channels": (16, 24, 32, 64, 320),
    },
    "densenet161": {
        "sequence": tuple(f"features.{name}" for name in (
            "conv0", "norm0", "pool0", "denseblock1", "transition1", "denseblock2", "transition2",
            "denseblock3", "transition3", "denseblock4", "norm5")),
        "taps": ("features.norm0", "features.pool0", "features.transition1", "features.transition2",
                 "features.norm5"),
        "channels": (96, 96, 192, 384, 2208),
    },
}
STRIDES = (2, 4, 8, 16, 32)
NESTED_KEYS = ("state_dict", "model", "state_dict_ema")
LISTED_KEYS = 4  # keys named in a weights-mismatch error line


def hub_weights_error(name: str, model: nn.Module, cause: BaseException) -> ModelError:
    """The one line for `pretrained: true` when neither the cache nor the hub has the weights."""
    hub_id = model.pretrained_cfg.get("hf_hub_id") or name
    return ModelError(
        f"ImageNet weights of timm {name} are not in the Hugging Face cache and the hub cannot be reached "
        f"({type(cause).__name__}): run once with internet to cache them (HF_HOME chooses the cache), or set "
        f"model.pretrained (meta.pretrained for the meta-learner) to a local .safetensors/.pth file of timm "
        f"{name}, or to false for random init", hub_id)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a .safetensors file or a torch file (weights_only), plain or nested
    under "state_dict" / "model" / "state_dict_ema"; a DataParallel `module.` prefix is dropped."""
    if not path.is_file():
        raise ModelError("pretrained weights file not found", path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"not a readable .safetensors file ({e})", path) from None
    else:
        state = load_checkpoint(path)
        for key in NESTED_KEYS:
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("not a state_dict (a mapping of parameter names to tensors)", path)
    return {re.sub(r"^module\.", "", k): v for k, v in state.items()}


def _listed(label: str, keys: list[str]) -> str:
    more = f" (+{len(keys) - LISTED_KEYS} more)" if len(keys) > LISTED_KEYS else ""
    return f"{label} {', '.join(keys[:LISTED_KEYS])}{more}"


def load_local_weights(model: nn.Module, name: str, path: Path, needed: list[str]) -> None:
    """Load `path` into the timm classifier `model`. Keys of `needed` (the encoder's part of
    the model) must all be there with their shapes; the classifier head may be absent."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in needed if k not in state]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in needed
              if k in state and state[k].shape != own[k].shape]
    unknown = [k for k in state if k not in own]
    if missing or shapes:
        parts = [_listed(label, keys) for label, keys in
                 (("missing", missing), ("shape mismatch", shapes), ("unexpected", unknown)) if keys]
        raise CheckpointError(f"weights do not fit timm {name}: {'; '.join(parts)}", path)
    model.load_state_dict({k: state[k] for k in needed}, strict=False)


def timm_classifier(name: str) -> nn.Module:
    """timm's classifier `name`, randomly initialised (weights come after, see `load_weights`)."""
    try:
        return timm.create_model(name, pretrained=False)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise ModelError(f"cannot build timm encoder {name!r}: {e}", name) from None


def cached_hub_file(model: nn.Module) -> str | None:
    """The Hugging Face cache's copy of the timm model's weights file, or None."""
    from huggingface_hub import try_to_load_from_cache

    hub_id = model.pretrained_cfg.get("hf_hub_id")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename) if hub_id else None
        if isinstance(found, str):
            return found
    return None


@contextmanager
def quiet_hub():
    """huggingface_hub logs each retry of an unreachable hub; the user gets one line instead."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


def load_weights(model: nn.Module, name: str, pretrained: bool | str | Path, needed: list[str]) -> None:
    """Give the timm classifier `model` the weights `pretrained` asks for (see the module doc);
    `needed`: the state_dict keys a local file must hold. `true` reads the Hugging Face cache
    without asking the hub when the weights are there, else downloads them into it."""
    if pretrained is True:
        from timm.models import load_pretrained

        cached = cached_hub_file(model)
        try:
            with quiet_hub():
                load_pretrained(model, pretrained_cfg={**model.pretrained_cfg, "file": cached} if cached else None)
        except Exception as e:  # network or cache: huggingface_hub raises OSError and HTTP errors
            raise hub_weights_error(name, model, e) from None
    elif pretrained:
        load_local_weights(model, name, Path(pretrained).expanduser(), needed)


def widen_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first conv by one taking `in_channels`, whose filters repeat the RGB
    filters cyclically over the new channels (the study's `modify_input`)."""
    path = model.pretrained_cfg.get("first_conv")
    if not path:
        raise ModelError(f"timm model {type(model).__name__} names no first conv to widen", type(model).__name__)
    conv = model.get_submodule(path)
    wide = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     conv.groups, bias=conv.bias is not None)
    with torch.no_grad():
        wide.weight.copy_(conv.weight[:, torch.arange(in_channels) % conv.in_channels])
        if conv.bias is not None:
            wide.bias.copy_(conv.bias)
    model.set_submodule(path, wide)


def timm_taps(model: nn.Module, name: str) -> list[int]:
    """Indices into timm's feature_info of the last feature at each of STRIDES."""
    info = model.feature_info
    strides = [int(f["reduction"]) for f in info]
    if any(s not in strides for s in STRIDES):
        raise ModelError(f"timm {name} has features at strides {', '.join(map(str, strides))}; the decoders need "
                         f"strides {', '.join(map(str, STRIDES))}", name)
    return [max(i for i, s in enumerate(strides) if s == stride) for stride in STRIDES]


class TimmEncoder(nn.Module):
    """x [B,in_channels,H,W] (normalised; H, W multiples of 32) -> five feature maps at strides
    2, 4, 8, 16, 32 with `out_channels` channels. The deepest is projected by a 1x1 conv (with
    bias, as the study's) to `deep_channels` when that differs from the backbone's width.

    The timm classifier is `self.model` (its head replaced by nn.Identity), so its state_dict
    keys stay timm's."""

    def __init__(self, name: str = "ghostnet_100", deep_channels: int | None = None, in_channels: int = 3,
                 pretrained: bool | str | Path = False):
        super().__init__()
        self.name = name
        model = timm_classifier(name)
        spec = STUDY_TAPS.get(name)
        if spec is not None:
            keep = {path.split(".")[0] for path in spec["sequence"]}
            needed = [k for k in model.state_dict() if k.split(".")[0] in keep]
        else:
            head = model.pretrained_cfg.get("classifier")
            needed = [k for k in model.state_dict() if not (head and k.startswith(head + "."))]
        load_weights(model, name, pretrained, needed)
        if int(in_channels) != 3:
            widen_first_conv(model, int(in_channels))
        if spec is not None:
            for child, _ in list(model.named_children()):
                if child not in keep:  # classifier head and pooling: not part of the encoder
                    setattr(model, child, nn.Identity())
            self.model, self.sequence, self.taps = model, spec["sequence"], spec["taps"]
            channels = list(spec["channels"])
        else:
            indices = timm_taps(model, name)
            self.taps = tuple(model.feature_info[i]["module"] for i in indices)
            self.model, self.sequence = timm.models.FeatureListNet(model, out_indices=tuple(indices)), ()
            channels = [int(c) for c in self.model.feature_info.channels()]
        self.project = None
        if deep_channels is not None and int(deep_channels) != channels[-1]:
            self.project = nn.Conv2d(channels[-1], int(deep_channels), 1)
            channels[-1] = int(deep_channels)
        self.out_channels = tuple(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.sequence:
            features = []
            for path in self.sequence:
                x = self.model.get_submodule(path)(x)
                if path in self.taps:
                    features.append(x)
        else:
            features = list(self.model(x))
        if self.project is not None:
            features[-1] = self.project(features[-1])
        return features

    def stages(self) -> list[nn.Module]:
        """The five tapped modules, shallow to deep (hook points)."""
        if self.sequence:
            return [self.model.get_submodule(path) for path in self.taps]
        return [self.model.get_submodule(path.replace(".", "_")) for path in self.taps]
