"""Model cost: parameters, mult-adds, latency and FPS (DESIGN.md §9).

Mult-adds are counted with `torch.utils.flop_counter.FlopCounterMode` over one forward
pass under no_grad, as flops / 2 (one multiply-add = 2 flops). The input is rgb
[batch,3,H,W] in [0,1] on the model's device. Latency is the median wall time of
`repeats` forward passes after `warmup` passes, under `torch.inference_mode`, with CUDA
synchronised before and after each timed pass. The model is put in eval mode while it is
measured and given back in the mode it came in.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _example_rgb(size: Sequence[int], batch: int, device: torch.device) -> torch.Tensor:
    h, w = (int(v) for v in size)
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def count_gmacs(model: nn.Module, size: Sequence[int] = (416, 544), batch: int = 1) -> float:
    """Giga mult-adds of one forward pass on rgb [batch,3,H,W]: FlopCounterMode flops / 2 / 1e9."""
    x = _example_rgb(size, batch, _model_device(model))
    with _eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2 / 1e9


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model: nn.Module, size: Sequence[int] = (416, 544), batch: int = 1,
                    device: str | torch.device = "cpu", warmup: int = 3, repeats: int = 10) -> dict[str, float]:
    """Moves the model to `device`; returns {"latency_ms": median ms per forward pass of
    a batch, "fps": images per second = batch / median}."""
    device = torch.device(device)
    model.to(device)
    x = _example_rgb(size, batch, device)
    times = []
    with _eval_mode(model), torch.inference_mode():
        for _ in range(max(0, int(warmup))):
            model(x)
        for _ in range(max(1, int(repeats))):
            _synchronize(device)
            start = time.perf_counter()
            model(x)
            _synchronize(device)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"latency_ms": median * 1e3, "fps": batch / median}


def profile_model(model: nn.Module, size: Sequence[int] = (416, 544), batch: int = 1,
                  device: str | torch.device = "cpu", repeats: int = 10) -> dict[str, float]:
    """{"params", "gmacs", "latency_ms", "fps"} of `model` at size (H, W) and `batch` on `device`."""
    latency = measure_latency(model, size, batch, device, repeats=repeats)
    return {"params": count_params(model), "gmacs": count_gmacs(model, size, batch), **latency}
