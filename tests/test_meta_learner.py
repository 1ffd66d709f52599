"""The SG study's weighting network, the stacked ensemble's modes and the averaging
baselines, on tiny stand-in base learners defined here (two convs each)."""

import pytest
import torch
from torch import nn

from ensemble_mde.errors import ModelError
from ensemble_mde.losses import silog_loss
from ensemble_mde.profiling import count_gmacs, count_params
from meta_learner import (BASELINES, MeanEnsemble, MedianEnsemble, OracleEnsemble, StackedEnsemble,
                          WeightedEnsemble, WeightingNetwork, blend)
from meta_learner.weighting import RELAXED_INIT_DEPTH, WeightingOnRgb

from conftest import TinyLearner, stage_report

H, W = 32, 48


def make_batch(seed: int = 0, b: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    depth = 0.5 + 9.0 * torch.rand(b, 1, H, W, generator=g)
    depth[:, :, :4] = 0.0  # a band of invalid ground truth
    return {"rgb": torch.rand(b, 3, H, W, generator=g), "depth": depth}


def make_ensemble(mode: str, k: int = 2, head: str = "softmax") -> StackedEnsemble:
    bases = [TinyLearner(seed=i) for i in range(k)]
    torch.manual_seed(100)
    meta = WeightingNetwork(k, "rgb+d", head=head)
    return StackedEnsemble(bases, meta, [f"tiny{i}" for i in range(k)], mode=mode)


def state_copy(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def train_steps(model: StackedEnsemble, steps: int = 3, lr: float = 1e-2, base_lr_factor: float = 0.1) -> None:
    """What the engine does: model.train(), forward, loss, backward, AdamW step."""
    optimizer = torch.optim.AdamW(model.param_groups(lr, base_lr_factor), lr=lr)
    model.train()
    for step in range(steps):
        batch = make_batch(seed=step)
        terms = model.loss(model(batch["rgb"]), batch)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()


# ---------------------------------------------------------------- the weighting network

@pytest.mark.parametrize("inputs, channels", [("rgb", 3), ("d", 3), ("rgb+d", 6)])
def test_network_input_channels_and_output_shape(inputs, channels):
    k = 3
    net = WeightingNetwork(k, inputs)
    assert net.in_channels == channels
    assert net.encoder.model.conv_stem.weight.shape[1] == channels
    rgb = torch.rand(2, 3, 37, 50)         # not a multiple of 32: padded inside, cropped back
    depths = 10 * torch.rand(2, k, 37, 50)
    out = net(rgb if "rgb" in inputs else None, depths if "d" in inputs else None)
    assert set(out) == {"weights"} and out["weights"].shape == (2, k, 37, 50)


def test_softmax_weights_sum_to_one_per_pixel_and_vary():
    k = 3
    net = WeightingNetwork(k, "rgb+d").eval()
    torch.manual_seed(0)
    rgb, depths = torch.rand(2, 3, H, W), 10 * torch.rand(2, k, H, W)
    with torch.no_grad():
        weights = net(rgb, depths)["weights"]
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, H, W), rtol=0, atol=1e-6)
    assert bool((weights >= 0).all())
    assert float(weights.std(dim=(2, 3)).min()) > 1e-4   # not constant over the image


def test_relaxed_head_gives_positive_finite_depth_and_no_weights():
    net = WeightingNetwork(3, "rgb+d", head="relaxed").eval()
    assert count_params(net.relax) == 3 + 1                # 1x1 conv K -> 1 with bias
    with torch.no_grad():
        nn.init.constant_(net.relax.bias, -5.0)            # the ReLU clips everything: depth = the 1e-9 floor
        out = net(torch.rand(2, 3, H, W), 10 * torch.rand(2, 3, H, W))
    assert set(out) == {"depth"} and out["depth"].shape == (2, 1, H, W)
    assert bool(torch.isfinite(out["depth"]).all()) and bool((out["depth"] > 0).all())
    ensemble = make_ensemble("freeze", head="relaxed").eval()
    with torch.no_grad():
        result = ensemble(torch.rand(1, 3, H, W))
    assert "weights" not in result and bool((result["depth"] > 0).all())


def test_a_fresh_relaxed_head_starts_alive_at_every_pixel():
    """Every pixel's depth starts at RELAXED_INIT_DEPTH or above, on the live side of the last
    ReLU: d depth / d bias is 1 at each pixel (under PyTorch's default init most pixels started
    dead and the synthetic cpu study's relaxed run never learnt)."""
    net = WeightingNetwork(3, "rgb+d", head="relaxed").eval()
    depth = net(torch.rand(2, 3, H, W), 10 * torch.rand(2, 3, H, W))["depth"]
    assert bool((depth >= RELAXED_INIT_DEPTH).all())
    depth.sum().backward()
    assert float(net.relax.bias.grad) == 2 * H * W


def test_depth_inputs_are_metres_and_rgb_is_imagenet_normalised():
    """As the study's controller sees them: cat(normalised image, base depths in metres)."""
    net = WeightingNetwork(2, "rgb+d")
    depths = torch.tensor([2.0, 8.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4)
    grey = torch.full((1, 3, 4, 4), 0.485)      # ImageNet mean of the red channel -> 0 after normalising
    x = net.network_input(grey, depths)
    assert x.shape == (1, 5, 4, 4) and float(x[0, 0, 0, 0]) == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(x[0, 3:, 0, 0], torch.tensor([2.0, 8.0]))


def test_network_rejects_bad_arguments():
    with pytest.raises(ModelError, match="meta.inputs"):
        WeightingNetwork(3, "depth")
    with pytest.raises(ModelError, match="meta.head"):
        WeightingNetwork(3, "rgb", head="sigmoid")
    net = WeightingNetwork(3, "rgb+d")
    with pytest.raises(ModelError, match="base depths"):
        net(torch.rand(1, 3, H, W), torch.rand(1, 2, H, W))


# The study's torchinfo totals at 416x544, K = 3 (architecture/MOD_{IO,I,O}-F-G.txt,
# MOD_IO-F-M2.txt, MOD_IO-F-D161.txt): (params, G mult-adds).
STUDY_SIZES = [("rgb+d", "ghostnet_100", 4_266_678, 1.69), ("rgb", "ghostnet_100", 4_266_246, 1.66),
               ("d", "ghostnet_100", 4_266_246, 1.66), ("rgb+d", "mobilenetv2_100", 3_702_458, 2.41),
               ("rgb+d", "densenet161", 30_298_146, 37.53)]


@pytest.mark.parametrize("inputs, encoder, params, gmacs", STUDY_SIZES)
def test_sizes_are_the_studys_at_416x544(inputs, encoder, params, gmacs):
    with torch.device("meta"):
        net = WeightingNetwork(3, inputs, encoder=encoder)
    assert count_params(net) == params
    assert count_gmacs(WeightingOnRgb(net), (416, 544)) == pytest.approx(gmacs, rel=0.01)


def test_decoder_stages_match_the_study_summary():
    """MOD_IO-F-G.txt: each decoder stage's output [C, H, W] and parameter count at 416x544."""
    stages = {"trunk.conv": ((960, 15, 19), 922_560), "trunk.up1": ((592, 26, 34), 10_560 + 461_760),
              "trunk.up2": ((280, 52, 68), 6_512 + 142_560), "trunk.up3": ((144, 104, 136), 3_080 + 33_840),
              "trunk.up4": ((76, 208, 272), 1_584 + 8_760), "up5": ((30, 208, 272), 684 + 152 + 2_280 + 60),
              "conv3": ((3, 416, 544), 270 + 60 + 90 + 6)}
    net = WeightingNetwork(3, "rgb+d").eval()
    assert stage_report(net, stages, torch.rand(1, 3, 416, 544), 10 * torch.rand(1, 3, 416, 544)) == stages


def test_pretrained_non_ghostnet_encoder_loads_from_the_hf_cache_widening_the_first_conv(hf_cache):
    cached = hf_cache("mobilenetv2_100")
    net = WeightingNetwork(3, "rgb+d", encoder="mobilenetv2_100", pretrained=True)
    own = net.encoder.model.state_dict()
    stem = own.pop("conv_stem.weight")
    assert stem.shape == (32, 6, 3, 3)                      # RGB filters repeated over the depth channels
    assert torch.equal(stem[:, :3], cached["conv_stem.weight"]) and torch.equal(stem[:, 3:], cached["conv_stem.weight"])
    assert all(torch.equal(v, cached[k]) for k, v in own.items())


def test_selectable_layers_name_encoder_and_decoder_stages():
    model = make_ensemble("freeze")
    layers = model.selectable_layers()
    assert list(layers) == [f"enc_{i}" for i in range(5)] + ["dec_conv", "dec_up1", "dec_up2", "dec_up3",
                                                             "dec_up4", "dec_up5", "dec_head"]
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = output.shape
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in layers.items()]
    model.eval()(torch.rand(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert [seen[f"enc_{i}"][-1] for i in range(5)] == [32, 16, 8, 4, 2]      # strides 2..32
    assert [seen[n][-1] for n in ("dec_up1", "dec_up2", "dec_up3", "dec_up4", "dec_up5", "dec_head")] == [
        4, 8, 16, 32, 32, 64]


# ---------------------------------------------------------------- blend and the ensemble

def test_blend_hand_computed():
    weights = torch.tensor([0.25, 0.75]).view(1, 2, 1, 1)
    depths = torch.tensor([[2.0, 4.0], [1.0, 3.0]]).view(1, 2, 1, 2)   # learner 0: (2, 4), learner 1: (1, 3)
    torch.testing.assert_close(blend(weights, depths), torch.tensor([1.25, 3.25]).view(1, 1, 1, 2))


def test_one_hot_weights_reproduce_that_base_exactly():
    depths = 10 * torch.rand(2, 3, H, W)
    choice = torch.randint(0, 3, (2, 1, H, W))
    one_hot = torch.zeros(2, 3, H, W).scatter_(1, choice, 1.0)
    assert torch.equal(blend(one_hot, depths), depths.gather(1, choice))
    for k in range(3):
        only_k = torch.zeros(2, 3, H, W)
        only_k[:, k] = 1.0
        assert torch.equal(blend(only_k, depths), depths[:, k:k + 1])


def test_ensemble_outputs_and_cached_depths_skip_the_bases():
    model = make_ensemble("freeze", k=2).eval()
    rgb = torch.rand(2, 3, H, W)
    out = model(rgb)
    assert out["depth"].shape == (2, 1, H, W) and out["weights"].shape == (2, 2, H, W)
    expected = torch.cat([base(rgb)["depth"] for base in model.bases], dim=1)
    torch.testing.assert_close(out["base_depths"], expected)
    torch.testing.assert_close(out["depth"], blend(out["weights"], expected))

    calls = []
    hooks = [b.register_forward_hook(lambda *a: calls.append(1)) for b in model.bases]
    cached = 1.0 + torch.rand(2, 2, H, W)
    out = model(rgb, base_depths=cached)
    assert calls == [] and "base_outputs" not in out
    assert torch.equal(out["base_depths"], cached)
    for h in hooks:
        h.remove()


def test_freeze_keeps_bases_bit_identical_while_the_meta_trains():
    model = make_ensemble("freeze")
    bases_before, meta_before = state_copy(model.bases), state_copy(model.meta)
    train_steps(model)
    assert not any(b.training for b in model.bases) and model.meta.training
    bases_after = model.bases.state_dict()
    assert all(torch.equal(bases_before[k], bases_after[k]) for k in bases_before)   # BN running stats too
    assert not all(torch.equal(meta_before[k], v) for k, v in model.meta.state_dict().items())
    assert [g["name"] for g in model.param_groups(1e-3, 0.1)] == ["meta"]
    assert not any(p.requires_grad for p in model.bases.parameters())


def test_finetune_trains_bases_at_a_lower_learning_rate():
    model = make_ensemble("finetune")
    groups = model.param_groups(1e-3, 0.1)
    assert [(g["name"], g["lr"]) for g in groups] == [("bases", pytest.approx(1e-4)), ("meta", 1e-3)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    before = state_copy(model.bases)
    train_steps(model)
    assert all(b.training for b in model.bases)
    changed = [k for k, v in model.bases.state_dict().items() if not torch.equal(before[k], v)]
    assert any(k.endswith("conv1.weight") for k in changed)


def test_loss_terms_per_mode():
    batch = make_batch()
    freeze = make_ensemble("freeze")
    out = freeze(batch["rgb"])
    terms = freeze.loss(out, batch)
    assert set(terms) == {"silog", "total"}
    valid = (batch["depth"] > 1e-3) & (batch["depth"] < 10.0)
    torch.testing.assert_close(terms["total"], silog_loss(out["depth"], batch["depth"], valid))

    simultaneous = make_ensemble("simultaneous")
    out = simultaneous(batch["rgb"])
    terms = simultaneous.loss(out, batch)
    assert set(terms) == {"silog", "base_tiny0", "base_tiny1", "total"}
    own = [b.loss(o, batch)["total"] for b, o in zip(simultaneous.bases, out["base_outputs"])]
    torch.testing.assert_close(terms["base_tiny0"], own[0])
    torch.testing.assert_close(terms["total"], terms["silog"] + own[0] + own[1])
    with pytest.raises(ModelError, match="simultaneous"):
        simultaneous.loss(simultaneous(batch["rgb"], base_depths=out["base_depths"].detach()), batch)


def test_simultaneous_trains_bases_and_meta_together():
    model = make_ensemble("simultaneous")
    bases_before, meta_before = state_copy(model.bases), state_copy(model.meta)
    train_steps(model, base_lr_factor=1.0)
    assert not all(torch.equal(bases_before[k], v) for k, v in model.bases.state_dict().items())
    assert not all(torch.equal(meta_before[k], v) for k, v in model.meta.state_dict().items())


def test_ensemble_rejects_mismatched_parts():
    with pytest.raises(ModelError, match="weights for"):
        StackedEnsemble([TinyLearner(0), TinyLearner(1)], WeightingNetwork(3, "rgb"), ["a", "b"])
    with pytest.raises(ModelError, match="unique name"):
        StackedEnsemble([TinyLearner(0), TinyLearner(1)], WeightingNetwork(2, "rgb"), ["a", "a"])
    with pytest.raises(ModelError, match="mode"):
        make_ensemble("frozen")


# ---------------------------------------------------------------- baselines

# Three learners, three pixels: (1, 2, 6), (4, 3, 5), (9, 7, 8) metres.
DEPTHS = torch.tensor([[1.0, 4.0, 9.0], [2.0, 3.0, 7.0], [6.0, 5.0, 8.0]]).view(1, 3, 1, 3)


def test_mean_and_median_hand_computed():
    torch.testing.assert_close(MeanEnsemble()(DEPTHS), torch.tensor([3.0, 4.0, 8.0]).view(1, 1, 1, 3))
    torch.testing.assert_close(MedianEnsemble()(DEPTHS), torch.tensor([2.0, 4.0, 8.0]).view(1, 1, 1, 3))
    four = torch.tensor([1.0, 2.0, 6.0, 10.0]).view(1, 4, 1, 1)       # even K: mean of the middle two
    assert float(MedianEnsemble()(four)) == 4.0


def test_weighted_by_inverse_validation_rmse_hand_computed():
    weighted = WeightedEnsemble([0.5, 1.0, 2.0])          # 1/rmse = 2, 1, 0.5 -> 4/7, 2/7, 1/7
    torch.testing.assert_close(weighted.weights, torch.tensor([4 / 7, 2 / 7, 1 / 7]))
    expected = torch.tensor([(4 * 1 + 2 * 2 + 6) / 7, (16 + 6 + 5) / 7, (36 + 14 + 8) / 7]).view(1, 1, 1, 3)
    torch.testing.assert_close(weighted(DEPTHS), expected)
    with pytest.raises(ModelError, match="RMSE"):
        WeightedEnsemble([0.5, 0.0, 1.0])
    with pytest.raises(ModelError):
        WeightedEnsemble([0.5, 1.0])(DEPTHS)              # two weights for three learners


def test_oracle_picks_the_nearest_base_and_falls_back_to_the_mean():
    gt = torch.tensor([2.2, 0.0, 9.4]).view(1, 1, 1, 3)   # pixel 1 has no ground truth
    oracle = OracleEnsemble()
    assert oracle.needs_gt and oracle.upper_bound
    torch.testing.assert_close(oracle(DEPTHS, gt), torch.tensor([2.0, 4.0, 9.0]).view(1, 1, 1, 3))
    with pytest.raises(ModelError, match="ground-truth"):
        oracle(DEPTHS)


def test_baseline_registry():
    assert set(BASELINES) == {"mean", "median", "weighted", "oracle", "convex"}
    assert BASELINES["weighted"]([1.0, 1.0, 1.0])(DEPTHS).shape == (1, 1, 1, 3)
    assert not BASELINES["mean"]().upper_bound


def test_a_base_sees_a_training_crop_scaled_as_its_frame_would_be():
    """A base trained at 192x256 on 480x640 frames: a whole frame reaches it at 192x256, a
    416x544 crop of one at the same scale (166x218), not stretched to a whole frame."""
    from meta_learner.ensemble import base_input_size

    assert base_input_size((192, 256), (480, 640), (480, 640)) == (192, 256)
    assert base_input_size((192, 256), (416, 544), (480, 640)) == (166, 218)
    assert base_input_size((192, 256), (416, 544), None) == (192, 256)      # no grid known: the size itself
    assert base_input_size(None, (416, 544), (480, 640)) is None             # a base without one: as it comes
