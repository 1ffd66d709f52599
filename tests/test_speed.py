"""The fast inference path (ensemble_mde.speed) gives the plain path's outputs."""

import copy

import pytest
import torch
from torch import nn

import base_learners
from ensemble_mde.config import load_config
from ensemble_mde.speed import fold_batchnorm, keep_freed_memory, prepare_for_inference
from ensemble_mde.loading import build_learner
from meta_learner.baselines import BaselineOverBases, MeanEnsemble
from meta_learner.ensemble import StackedEnsemble
from meta_learner.weighting import WeightingNetwork

SIZE = (64, 96)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms, so folding is really exercised."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            if m.affine:
                m.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.data.copy_(0.1 * torch.randn(n, generator=gen))
    return model


def plain_and_fast(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    model = randomize_batchnorm(model).eval()
    return model, prepare_for_inference(copy.deepcopy(model))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    # float32 rounding: folded weights and the channels_last kernels sum in another order;
    # seen up to ~2e-6 relative on depths in metres, asserted at 1e-4.
    return torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_fold_batchnorm_matches_conv_then_batchnorm():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    seq = randomize_batchnorm(nn.Sequential(conv, nn.BatchNorm2d(6), nn.ReLU())).eval()
    x = torch.randn(2, 4, 9, 11)
    expected = seq(x)
    assert fold_batchnorm(seq) == 1 and isinstance(seq[1], nn.Identity)
    assert torch.allclose(seq(x), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["adabins", "bts", "ldrn", "meter_xxs"])
def test_fast_path_gives_the_plain_depth(name):
    torch.manual_seed(0)
    plain, fast = plain_and_fast(build_learner(load_config(["defaults", f"base/{name}"]), init_weights=False))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) < sum(
        isinstance(m, nn.BatchNorm2d) for m in plain.modules())               # something was folded
    x = torch.rand(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert close(fast(x)["depth"], plain(x)["depth"])


def test_fast_path_gives_the_plain_ensemble_and_average():
    torch.manual_seed(0)
    names = ["bts", "ldrn"]
    bases = [base_learners.create(n) for n in names]
    meta = WeightingNetwork(2, inputs="rgb+d")
    nn.init.normal_(meta.conv3.pointwise[0].weight, std=3.0)   # a trained-looking head: weights far from 1/K
    plain, fast = plain_and_fast(StackedEnsemble(bases, meta, names, mode="freeze"))
    x = torch.rand(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out_plain, out_fast = plain(x), fast(x)
        assert float(out_plain["weights"].std()) > 0.05
        assert close(out_fast["weights"], out_plain["weights"])
        assert close(out_fast["depth"], out_plain["depth"])
        average = BaselineOverBases(fast.bases, names, MeanEnsemble())(x)["depth"]
        assert close(average, out_plain["base_depths"].mean(dim=1, keepdim=True))


def test_keep_freed_memory_is_idempotent():
    first = keep_freed_memory()
    assert keep_freed_memory() == first


def test_compiled_fast_path_gives_the_plain_weights():
    """`--compile` (inductor with frozen weights) on top of the fast path: same weights."""
    torch.manual_seed(0)
    meta = WeightingNetwork(2, inputs="rgb+d")
    nn.init.normal_(meta.conv3.pointwise[0].weight, std=3.0)
    plain, fast = plain_and_fast(meta)
    compiled = prepare_for_inference(fast, compile=True)
    gen = torch.Generator().manual_seed(1)
    rgb, depths = torch.rand(1, 3, *SIZE, generator=gen), 10 * torch.rand(1, 2, *SIZE, generator=gen)
    with torch.inference_mode():
        expected = plain(rgb, depths)["weights"]
        assert float(expected.std()) > 0.05
        assert close(compiled(rgb, depths)["weights"], expected)
