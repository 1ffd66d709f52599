"""The GhostNet learners (AdaBins, BTS, LDRN): shapes and units, bins, planar guidance,
losses and gradients, hook order, local pretrained weights, and the size budget."""

import math

import pytest
import timm
import torch

import base_learners
from base_learners.bts import planar_guidance_depth, plane_from_params
from ensemble_mde.errors import CheckpointError, ModelError
from ensemble_mde.profiling import count_gmacs, count_params

NAMES = ("adabins", "bts", "ldrn")
# The SG work's sizes at 416x544 (params, G mult-adds); ours must be within 60-100% of both.
REFERENCE = {"adabins": (17.23e6, 9.57), "bts": (8.90e6, 12.07), "ldrn": (14.89e6, 14.83)}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: base_learners.create(name) for name in NAMES}


def synthetic_batch(h, w, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    depth = 0.5 + 8.5 * torch.rand(batch, 1, h, w, generator=g)
    depth[:, :, : h // 4] = 0.0  # invalid GT rows
    return {"rgb": torch.rand(batch, 3, h, w, generator=g), "depth": depth}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(64, 96), (72, 100)])  # the second is not a multiple of 32
def test_output_shape_and_units(models, name, size):
    model = models[name].eval()
    rgb = synthetic_batch(*size)["rgb"]
    with torch.no_grad():
        out = model(rgb)
    depth = out["depth"]
    assert depth.shape == (2, 1, *size)
    assert depth.dtype == torch.float32
    assert torch.isfinite(depth).all()
    assert (depth > 0).all() and (depth <= model.max_depth).all()
    # not a constant map: the output depends on the pixel
    assert depth.std() > 0


@pytest.mark.parametrize("size", [(64, 96), (72, 100)])
def test_adabins_bin_centers_increase_inside_range(models, size):
    model = models["adabins"].eval()
    with torch.no_grad():
        out = model(synthetic_batch(*size)["rgb"])
    centers = out["bin_centers"]
    assert centers.shape == (2, 256)
    assert (centers[:, 1:] > centers[:, :-1]).all()
    assert (centers >= model.min_depth).all() and (centers <= model.max_depth).all()
    # depth is a convex combination of the centres
    assert (out["depth"] >= centers.min() - 1e-5).all() and (out["depth"] <= centers.max() + 1e-5).all()


def test_planar_guidance_depth_matches_hand_computation():
    # two cells side by side, k = 2: u, v in {-0.25, +0.25}
    plane = torch.tensor([[[[0.1, -0.3]], [[0.2, 0.0]], [[0.9, 0.8]], [[2.0, 5.0]]]])  # [1,4,1,2]
    expected = torch.tensor([[2 / 0.825, 2 / 0.875, 5 / 0.875, 5 / 0.725],
                             [2 / 0.925, 2 / 0.975, 5 / 0.875, 5 / 0.725]])
    depth = planar_guidance_depth(plane, 2)
    assert depth.shape == (1, 1, 2, 4)
    torch.testing.assert_close(depth[0, 0], expected)


def test_planar_guidance_fronto_parallel_plane_is_flat():
    plane = torch.tensor([0.0, 0.0, 1.0, 3.5]).view(1, 4, 1, 1).repeat(2, 1, 3, 2)
    depth = planar_guidance_depth(plane, 8)
    assert depth.shape == (2, 1, 24, 16)
    torch.testing.assert_close(depth, torch.full_like(depth, 3.5))


def test_plane_from_params_gives_unit_normals_and_metric_distance():
    plane = plane_from_params(torch.zeros(1, 3, 2, 2), max_depth=10.0)
    # sigmoid(0) = 0.5: theta = pi/6, phi = pi, dist = 5 m
    expected = torch.tensor([-0.5, 0.0, math.cos(math.pi / 6), 5.0]).view(1, 4, 1, 1).expand(1, 4, 2, 2)
    torch.testing.assert_close(plane, expected, atol=1e-6, rtol=0)
    norms = plane_from_params(torch.randn(2, 3, 4, 4) * 3, 10.0)[:, :3].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("name", NAMES)
def test_loss_backward_reaches_encoder(models, name):
    model = models[name].train()
    model.zero_grad()
    batch = synthetic_batch(64, 96)
    out = model(batch["rgb"])
    terms = model.loss(out, batch)
    assert "total" in terms and "silog" in terms
    assert terms["total"].ndim == 0 and torch.isfinite(terms["total"]) and terms["total"] > 0
    if name == "adabins":
        torch.testing.assert_close(terms["total"], terms["silog"] + 0.1 * terms["chamfer"])
    terms["total"].backward()
    stem = model.encoder.body.conv_stem.weight.grad
    deepest = model.encoder.stages()[-1]
    assert stem is not None and stem.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in deepest.parameters())
    model.zero_grad()


def test_loss_upsamples_to_ground_truth_resolution(models):
    model = models["bts"].eval()
    batch = synthetic_batch(64, 96)
    with torch.no_grad():
        out = model(batch["rgb"][..., ::2, ::2])
        terms = model.loss(out, batch)
    assert torch.isfinite(terms["total"])


@pytest.mark.parametrize("name", NAMES)
def test_selectable_layer_hooks_fire_in_order(models, name):
    model = models[name].eval()
    layers = model.selectable_layers()
    names = list(layers)
    assert names[:5] == [f"enc_{i}" for i in range(5)]
    assert len(names) > 5 and all(n.startswith("dec_") for n in names[5:])
    fired, shapes = [], {}

    def hook(layer_name):
        def record(module, inputs, output):
            fired.append(layer_name)
            shapes[layer_name] = output.shape
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, 64, 96))
    finally:
        for h in handles:
            h.remove()
    assert fired == names
    assert [shapes[f"enc_{i}"][1] for i in range(5)] == [16, 24, 40, 80, 160]
    assert all(len(s) == 4 for s in shapes.values())


def test_missing_pretrained_file_is_a_model_error(tmp_path):
    missing = tmp_path / "ghostnet_100.pth"
    with pytest.raises(ModelError, match="ghostnet_100.pth"):
        base_learners.create("bts", pretrained_path=str(missing))


@pytest.mark.parametrize("layout", ["classifier", "features_only"])
def test_pretrained_weights_load_from_local_file(tmp_path, layout):
    torch.manual_seed(1)
    source = timm.create_model("ghostnet_100", pretrained=False, features_only=layout == "features_only")
    file = tmp_path / f"{layout}.pth"
    torch.save({"state_dict": source.state_dict()}, file)
    model = base_learners.create("ldrn", pretrained_path=str(file))
    body = model.encoder.body
    torch.testing.assert_close(body.conv_stem.weight, source.conv_stem.weight, rtol=0, atol=0)
    deep_key = next(k for k in body.state_dict() if k.startswith("blocks_7.") and k.endswith("weight"))
    src_key = deep_key if layout == "features_only" else deep_key.replace("blocks_7.", "blocks.7.", 1)
    torch.testing.assert_close(body.state_dict()[deep_key], source.state_dict()[src_key], rtol=0, atol=0)


def test_weights_that_do_not_fit_are_a_checkpoint_error(tmp_path):
    file = tmp_path / "other.pth"
    torch.save({"conv_stem.weight": torch.zeros(8, 3, 3, 3)}, file)
    with pytest.raises(CheckpointError, match="conv_stem.weight"):
        base_learners.create("adabins", pretrained_path=str(file))


def test_bad_widths_are_model_errors():
    with pytest.raises(ModelError, match="widths"):
        base_learners.create("bts", widths=[512, 256])
    with pytest.raises(ModelError, match="level_widths"):
        base_learners.create("ldrn", level_widths=[64, 32])
    with pytest.raises(ModelError, match="decoder_widths"):
        base_learners.create("adabins", decoder_widths=[64])
    with pytest.raises(ModelError, match="unexpected keyword"):
        base_learners.create("bts", width=512)


@pytest.mark.parametrize("name", NAMES)
def test_size_within_reference_budget(name):
    """Params and mult-adds at 416x544 within 60-100% of the SG work's (counted on the meta
    device: shapes only, no arithmetic)."""
    with torch.device("meta"):
        model = base_learners.create(name)
    params, gmacs = count_params(model), count_gmacs(model, (416, 544))
    ref_params, ref_gmacs = REFERENCE[name]
    print(f"{name}: {params / 1e6:.2f}M params ({params / ref_params:.0%} of reference), "
          f"{gmacs:.2f} G mult-adds ({gmacs / ref_gmacs:.0%}) at 416x544")
    assert 0.6 * ref_params <= params <= ref_params
    assert 0.6 * ref_gmacs <= gmacs <= ref_gmacs
