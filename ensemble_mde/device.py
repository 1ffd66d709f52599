"""Device choice: CUDA when available, else CPU; `--device` overrides."""

from __future__ import annotations

import torch

from ensemble_mde.errors import ConfigError


def resolve_device(name: str | None = "auto") -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)", "device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for but is not available on this machine (use --device cpu)", "device")
    return device
