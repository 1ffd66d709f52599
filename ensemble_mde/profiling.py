"""Model cost: parameters, mult-adds, latency and FPS (docs/design.md §9).

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

from ensemble_mde.training.engine import adamw


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what `platform` knows): timings
    are only comparable on the same kind of CPU (bf16 speed, AVX-512, ...)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
                  device: str | torch.device = "cpu", repeats: int = 10, compile: bool = False) -> dict[str, float]:
    """{"params", "gmacs", "latency_ms", "fps"} of `model` at size (H, W) and `batch` on `device`,
    timed on the fast inference path (ensemble_mde.speed; the model is changed in place).
    Params are those of the model as trained (counted before BatchNorm is folded)."""
    from ensemble_mde.speed import prepare_for_inference

    params = count_params(model)
    gmacs = count_gmacs(model, size, batch)
    latency = measure_latency(prepare_for_inference(model.to(device), compile=compile), size, batch, device,
                              repeats=repeats)
    return {"params": params, "gmacs": gmacs, **latency}


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, device: str | torch.device = "cpu",
                  repeats: int = 5) -> float:
    """The machine's own dense-matmul speed: GFLOP/s (2 n^3 flops per [n,n]@[n,n]) of the
    median of `repeats` timed products after one warm-up, in `dtype` on `device`."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.rand(n, n, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
    times = []
    with torch.inference_mode():
        torch.mm(a, b)
        for _ in range(max(1, int(repeats))):
            _synchronize(device)
            start = time.perf_counter()
            torch.mm(a, b)
            _synchronize(device)
            times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def _resident_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def peak_memory_mb(run, device: str | torch.device = "cpu") -> float:
    """Peak memory (MB) that `run()` adds: on CUDA the allocator's peak above what was
    allocated before; on CPU the growth of the process's peak resident set (VmHWM, reset
    through /proc/self/clear_refs first), so it includes allocator caching."""
    device = torch.device(device)
    if device.type == "cuda":
        _synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        _synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # Linux: reset VmHWM to the current resident set
    before = _resident_kib("VmRSS")
    run()
    return (_resident_kib("VmHWM") - before) / 1024


def training_images_per_s(model: nn.Module, size: Sequence[int], batch: int, device: str | torch.device = "cpu",
                          steps: int = 3, base_depths: int = 0) -> float:
    """Images/s of whole training steps (forward, `model.loss`, backward, AdamW step) on random
    rgb [batch,3,H,W] with GT depth uniform in 1..5 m: the median of `steps` timed steps after
    one warm-up step. base_depths=K feeds K random depth maps as `base_depths` (a freeze-mode
    stacked ensemble reading its prediction cache). The weights change: pass a copy."""
    device = torch.device(device)
    model.to(device).train()
    gen = torch.Generator().manual_seed(0)
    h, w = (int(v) for v in size)
    batch_dict = {"rgb": torch.rand(batch, 3, h, w, generator=gen).to(device),
                  "depth": (1 + 4 * torch.rand(batch, 1, h, w, generator=gen)).to(device)}
    extra = {"base_depths": (1 + 4 * torch.rand(batch, base_depths, h, w, generator=gen)).to(device)} if base_depths else {}
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    times = []
    for index in range(max(1, int(steps)) + 1):
        _synchronize(device)
        start = time.perf_counter()
        loss = model.loss(model(batch_dict["rgb"], **extra), batch_dict)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _synchronize(device)
        if index:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)
