"""The fast inference path, chosen from benchmarks/bench.py's measurements (benchmarks/NOTES.md).

- `keep_freed_memory()`: glibc returns every large freed block to the kernel and maps it
  again on the next allocation; a 416x544 forward pass then spends most of its time in page
  faults. Keeping freed memory in the heap (mallopt) removes those faults and made LDRN and
  BTS passes more than twice as fast on CPU. The heap is never trimmed, so a process keeps its
  peak memory for reuse (as PyTorch's CUDA caching allocator does): a trim threshold, even a
  large one, left three bases at batch 16 re-faulting on every pass.
  Called once by the CLI; a no-op off glibc. ENSEMBLE_MDE_MALLOC=system leaves the allocator alone.
- `prepare_for_inference(model)`: BatchNorm folded into the convolution before it (eval
  only) and channels_last weights (oneDNN's preferred layout on CPU, Tensor Cores' on CUDA;
  a contiguous input is converted by the first convolution at no measurable cost). Outputs
  equal the plain path's to float32 rounding (tests/test_speed.py).
- torch.compile stays opt-in (`--compile`): minutes of compilation on a 2-core CPU. It
  compiles with inductor's freezing (weights become constants, folded and pre-packed for
  oneDNN): a steady gain for the meta-learner at 416x544 on CPU, where compiling without
  freezing gave none.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the CLI calls keep_freed_memory before every
    from torch import nn  # command, and some (data synth, --version) need no torch at all

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4   # glibc mallopt parameters (malloc.h)
NEVER_TRIM = -1                         # mallopt's int -1 is SIZE_MAX as a trim threshold

_allocator_tuned = False


def keep_freed_memory() -> bool:
    """Serve large allocations from the heap and keep freed memory (glibc only); True if applied."""
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("ENSEMBLE_MDE_MALLOC", "").lower() == "system":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _allocator_tuned = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
    except (OSError, AttributeError):  # not glibc (musl, ...): leave the allocator alone
        return False
    return _allocator_tuned


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv <- bn(conv(.)) with bn's running statistics (eval semantics)."""
    import torch
    from torch import nn
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias.detach() if bn.affine else 0) - bn.running_mean * scale
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter(conv.weight.detach() * scale.reshape(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)


def _last_conv(module: nn.Module) -> nn.Conv2d | None:
    """The convolution whose output a following BatchNorm sees: a Conv2d, or the last
    Conv2d of a Sequential made only of convolutions (a separable convolution). Exactly
    Conv2d: a subclass may transform its weight (LDRN's weight standardisation would undo
    a folded scale)."""
    from torch import nn
    if type(module) is nn.Conv2d:
        return module
    if (isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward and len(module)
            and all(type(m) is nn.Conv2d for m in module)):
        return module[-1]
    return None


def fold_batchnorm(model: nn.Module) -> int:
    """Folds every BatchNorm2d that directly follows a convolution in a Sequential into that
    convolution and replaces it by Identity (in place; for eval only: training would need
    the batch statistics). Returns the number folded."""
    from torch import nn
    folded = 0
    for parent in list(model.modules()):
        if not isinstance(parent, nn.Sequential) or type(parent).forward is not nn.Sequential.forward:
            continue  # a Sequential with its own forward may not feed each child into the next
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = _last_conv(parent._modules[first]), parent._modules[second]
            if (conv is not None and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                    and conv.out_channels == bn.num_features):
                _fold_into(conv, bn)
                parent._modules[second] = nn.Identity()
                folded += 1
    return folded


def prepare_for_inference(model: nn.Module, compile: bool = False) -> nn.Module:
    """Eval mode, BatchNorm folded, channels_last; optionally torch.compile'd. In place;
    the result must not be trained."""
    import torch

    model.eval()
    fold_batchnorm(model)
    model.to(memory_format=torch.channels_last)
    return compile_for_inference(model) if compile else model


def compile_for_inference(model: nn.Module) -> nn.Module:
    """torch.compile with inductor's freezing: parameters are taken as constants, so the
    result must only run under no_grad / inference_mode and never be trained."""
    import torch

    return torch.compile(model, options={"freezing": True})

