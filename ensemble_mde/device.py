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
        device = None
    if device is None or device.type not in ("cpu", "cuda"):  # torch also names mps, xpu, meta ...
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)", "device")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for but is not available on this machine (use --device cpu)", "device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(f"no CUDA device {device.index}: this machine has {count} (cuda:0 .. cuda:{count - 1})",
                          "device")
    return device
