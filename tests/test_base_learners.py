"""The GhostNet learners (AdaBins, BTS, LDRN): shapes and units, bins, planar guidance,
losses and gradients, hook order, the study's encoder taps, every decoder stage against the
study's torchinfo summaries, and pretrained weights the timm way."""

import math

import pytest
import timm
import torch

import base_learners
from base_learners.bts import planar_guidance_depth, plane_from_params
from base_learners.encoders import TimmEncoder
from conftest import run_cli, stage_report
from ensemble_mde.config import packaged_config_path
from ensemble_mde.errors import CheckpointError, ModelError
from ensemble_mde.profiling import count_params

NAMES = ("adabins", "bts", "ldrn")
# Every parameter of the study's code at 416x544 (sincostanx/Undergrad-Thesis architecture/MOD-*.txt;
# AdaBins' torchinfo total 17,225,476 leaves out its positional encodings and attention projections).
REFERENCE_PARAMS = {"adabins": 17_553_668, "bts": 8_900_728, "ldrn": 14_892_724}

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
    stem = model.encoder.model.conv_stem.weight.grad
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
    assert [shapes[f"enc_{i}"][1] for i in range(5)] == [16, 24, 40, 112, 960]
    assert all(len(s) == 4 for s in shapes.values())


@pytest.mark.parametrize("name,channels", [
    ("ghostnet_100", (16, 24, 40, 112, 960)),       # the study: blocks 0, 2, 4, 6, 9
    ("mobilenetv2_100", (16, 24, 32, 64, 320)),     # features 1, 3, 6, 10, 17 of torchvision's
    ("densenet161", (96, 96, 192, 384, 2208)),      # norm0, pool0, transition1, transition2, norm5
    ("resnet18", (64, 64, 128, 256, 512)),          # any other timm name: timm's own taps
])
def test_encoder_taps_channels_and_strides(name, channels):
    encoder = TimmEncoder(name).eval()
    with torch.no_grad():
        features = encoder(torch.rand(1, 3, 64, 96))
    assert encoder.out_channels == channels
    assert [f.shape[1] for f in features] == list(channels)
    assert [(64 // f.shape[2], 96 // f.shape[3]) for f in features] == [(s, s) for s in (2, 4, 8, 16, 32)]
    assert len(encoder.stages()) == 5


def test_encoder_projection_and_wide_input():
    encoder = TimmEncoder("ghostnet_100", deep_channels=2048, in_channels=6).eval()
    rgb_stem = TimmEncoder("ghostnet_100").model.conv_stem.weight
    assert encoder.out_channels == (16, 24, 40, 112, 2048)
    assert count_params(encoder.project) == 960 * 2048 + 2048           # 1x1 conv with bias, as the study's
    with torch.no_grad():
        assert encoder(torch.rand(1, 6, 64, 64))[-1].shape == (1, 2048, 2, 2)
    stem = encoder.model.conv_stem.weight                               # the study's modify_input:
    assert stem.shape == (16, 6, 3, 3)                                  # RGB filters repeated, unscaled
    torch.testing.assert_close(stem[:, 3:], stem[:, :3], rtol=0, atol=0)
    assert not torch.equal(stem[:, :3], rgb_stem)                       # (a fresh random init each)


def test_unknown_or_unfit_timm_encoder_is_a_model_error():
    with pytest.raises(ModelError, match="no_such_net"):
        TimmEncoder("no_such_net")
    with pytest.raises(ModelError, match="strides 2, 4, 8, 16, 32"):
        TimmEncoder("convnext_atto")                                    # no stride-2 feature


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_is_the_studys(name):
    with torch.device("meta"):
        model = base_learners.create(name)
    assert count_params(model) == REFERENCE_PARAMS[name]


# Decoder stages at 416x544: output shape [C, H, W] and parameter count, from the study's
# torchinfo summaries (architecture/MOD-adabins.txt, MOD-BTS.txt, MOD-LDRN.txt).
STAGES = {
    "adabins": {
        "encoder.project": ((2048, 13, 17), 1_968_128),
        "decoder.trunk.conv": ((2048, 15, 19), 4_196_352),
        "decoder.trunk.up1": ((1136, 26, 34), 22_528 + 2_099_200),
        "decoder.trunk.up2": ((552, 52, 68), 12_496 + 582_656),
        "decoder.trunk.up3": ((280, 104, 136), 6_072 + 141_824),
        "decoder.trunk.up4": ((144, 208, 272), 3_080 + 36_096),
        "decoder.head": ((128, 208, 272), 1_296 + 288 + 18_432 + 256),
        "decoder.vit.patch_embed": ((128, 13, 17), 4_194_432),
        "decoder.vit.transformer": ((221, 128), 1_319_424),
        "decoder.vit.conv3x3": ((128, 208, 272), 1_152 + 256 + 16_384 + 256),
        "decoder.vit.regressor": ((256,), 33_024 + 65_792 + 65_792),
        "decoder.vit.conv_out": ((256, 208, 272), 33_024),
    },
    "bts": {
        "encoder.project": ((2208, 13, 17), 2_121_888),
        "decoder.upconv5": ((512, 26, 34), 24_288 + 1_131_520),
        "decoder.bn5": ((512, 26, 34), 1_024),
        "decoder.conv5": ((512, 26, 34), 5_616 + 1_248 + 319_488 + 1_024),
        "decoder.upconv4": ((256, 52, 68), 5_632 + 131_584),
        "decoder.conv4": ((256, 52, 68), 2_664 + 592 + 75_776 + 512),
        "decoder.bn4_2": ((256, 52, 68), 512),
        "decoder.daspp.0": ((128, 52, 68), 360_960),
        "decoder.daspp.1": ((128, 52, 68), 848 + 403_968),
        "decoder.daspp.2": ((128, 52, 68), 1_104 + 436_736),
        "decoder.daspp.3": ((128, 52, 68), 1_360 + 469_504),
        "decoder.daspp.4": ((128, 52, 68), 1_616 + 502_272),
        "decoder.daspp_conv": ((128, 52, 68), 8_064 + 1_792 + 114_688 + 256),
        "decoder.lpg8": ((1, 416, 544), 16_384 + 8_192 + 2_048 + 512 + 128 + 24),
        "decoder.upconv3": ((128, 104, 136), 1_408 + 16_640),
        "decoder.conv3": ((128, 104, 136), 1_377 + 306 + 19_584 + 256),
        "decoder.lpg4": ((1, 416, 544), 8_192 + 2_048 + 512 + 128 + 24),
        "decoder.upconv2": ((64, 208, 272), 1_408 + 8_320),
        "decoder.conv2": ((64, 208, 272), 729 + 162 + 5_184 + 128),
        "decoder.lpg2": ((1, 416, 544), 2_048 + 512 + 128 + 24),
        "decoder.upconv1": ((32, 416, 544), 704 + 2_112),
        "decoder.reduc1": ((1, 416, 544), 512 + 128 + 8),
        "decoder.conv1": ((32, 416, 544), 324 + 72 + 1_152 + 64),
        "decoder.get_depth": ((1, 416, 544), 288 + 64 + 32 + 2),
    },
    "ldrn": {
        "encoder.project": ((1024, 13, 17), 984_064),
        "decoder.aspp": ((512, 13, 17), 2_361_344 + 33_280 + 147_712 + 49_920 + 147_712 + 66_560 + 147_712
                         + 83_200 + 147_712 + 3_540_480),
        "decoder.level6": ((1, 13, 17), 1_180_672 + 295_424 + 73_984 + 18_560 + 352),
        "decoder.levels.0.up": ((256, 26, 34), 1_024 + 1_179_648),
        "decoder.levels.0.reduce": ((252, 26, 34), 736 + 92_736),
        "decoder.levels.0.fuse": ((256, 26, 34), 512 + 589_824),
        "decoder.levels.0.stack": ((1, 26, 34), 512 + 294_912 + 256 + 73_728 + 128 + 576),
        "decoder.levels.1.up": ((128, 52, 68), 512 + 294_912),
        "decoder.levels.1.reduce": ((124, 52, 68), 336 + 20_832),
        "decoder.levels.1.fuse": ((128, 52, 68), 256 + 147_456),
        "decoder.levels.1.stack": ((1, 52, 68), 256 + 73_728 + 128 + 576),
        "decoder.levels.2.up": ((64, 104, 136), 256 + 73_728),
        "decoder.levels.2.reduce": ((60, 104, 136), 176 + 5_280),
        "decoder.levels.2.fuse": ((64, 104, 136), 128 + 36_864),
        "decoder.levels.2.stack": ((1, 104, 136), 128 + 576),
        "decoder.levels.3.up": ((32, 208, 272), 128 + 18_432),
        "decoder.levels.3.reduce": ((28, 208, 272), 96 + 1_344),
        "decoder.levels.3.fuse": ((32, 208, 272), 64 + 9_216),
        "decoder.levels.3.stack": ((1, 208, 272), 64 + 288),
        "decoder.level1.up": ((28, 416, 544), 64 + 8_064),
        "decoder.level1.fuse": ((32, 416, 544), 64 + 9_216),
        "decoder.level1.stack": ((1, 416, 544), 64 + 4_608 + 32 + 144),
    },
}


@pytest.mark.parametrize("name", NAMES)
def test_decoder_stages_match_the_study_summary(name):
    torch.manual_seed(0)
    model = base_learners.create(name).eval()
    assert stage_report(model, STAGES[name], torch.rand(1, 3, 416, 544)) == STAGES[name]


def test_adabins_reads_its_queries_off_padded_tokens_on_small_inputs():
    """At 64x96 the decoder map gives 2x3 = 6 patch tokens: the sequence is padded to the 129
    tokens the regression head and the 128 queries need, with the learned encodings alone."""
    vit = base_learners.create("adabins").decoder.vit
    tokens = vit.tokens(torch.zeros(2, 128, 32, 48))
    assert tokens.shape == (2, 129, 128)
    patches = vit.patch_embed(torch.zeros(1, 128, 32, 48)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens[0, :6], patches[0] + vit.positional_encodings[:6])
    torch.testing.assert_close(tokens[0, 6:], vit.positional_encodings[6:129].detach().expand(123, -1))
    assert vit.tokens(torch.zeros(1, 128, 16 * 26, 16 * 20)).shape == (1, 520, 128)  # > 500: resampled


def test_pretrained_true_loads_exactly_the_cached_imagenet_weights(hf_cache):
    cached = hf_cache("ghostnet_100")
    model = base_learners.create("bts", pretrained=True)
    own = model.encoder.model.state_dict()
    assert len(own) > 400 and all(torch.equal(v, cached[k]) for k, v in own.items())


@pytest.mark.parametrize("suffix,part", [(".safetensors", "classifier"), (".pth", "features"), (".pt", "headless")])
def test_pretrained_local_file_loads(tmp_path, suffix, part):
    """A local file of timm ghostnet_100: the full classifier, its feature part (no conv_head,
    no classifier), or timm's num_classes=0 model (nested under "state_dict" in torch files)."""
    from safetensors.torch import save_file

    torch.manual_seed(3)
    source = timm.create_model("ghostnet_100", pretrained=False, num_classes=0 if part == "headless" else 1000)
    state = source.state_dict()
    if part == "features":
        state = {k: v for k, v in state.items() if not k.startswith(("conv_head.", "classifier."))}
    file = tmp_path / f"ghostnet_100{suffix}"
    save_file(state, str(file)) if suffix == ".safetensors" else torch.save({"state_dict": state}, file)
    own = base_learners.create("ldrn", pretrained=str(file)).encoder.model.state_dict()
    assert own.keys() <= state.keys() and all(torch.equal(v, state[k]) for k, v in own.items())


def test_pretrained_file_of_another_model_names_the_mismatched_keys(capsys, tmp_path, synth_root):
    from test_bad_input import train_error

    file = tmp_path / "mobilenet.pth"
    torch.save(timm.create_model("mobilenetv2_100", pretrained=False).state_dict(), file)
    with pytest.raises(CheckpointError, match="weights do not fit timm ghostnet_100: missing .*blocks"):
        base_learners.create("bts", pretrained=str(file))
    line = train_error(capsys, tmp_path, synth_root, "--set", f"model.pretrained={file}", learner="bts")
    assert line.startswith(f"error: {file}: weights do not fit timm ghostnet_100: missing ")
    assert "shape mismatch conv_stem.weight (32, 3, 3, 3) vs (16, 3, 3, 3)" in line


def test_pretrained_true_with_an_empty_cache_offline_is_one_line(hf_cache, synth_root, tmp_path):
    """As a user runs it: no weights cached, no network -> one line naming what is missing and
    both ways to supply it, exit 2, no run folder."""
    out = tmp_path / "runs" / "bts"
    proc = run_cli("train-base", "bts", "--data", synth_root, "--out", out, "--set", "model.pretrained=true",
                   "--epochs", "1", "--device", "cpu", "--no-progress")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: timm/ghostnet_100.in1k: ImageNet weights of timm ghostnet_100 are not in the "
                               "Hugging Face cache")
    assert "run once with internet" in lines[0] and "model.pretrained" in lines[0]
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_unexpected_argument_is_a_model_error():
    with pytest.raises(ModelError, match="unexpected keyword"):
        base_learners.create("bts", width=512)


def test_nyu_defaults_are_the_studys_recipe_and_the_cpu_preset_downloads_nothing():
    from ensemble_mde.config import load_config
    from ensemble_mde.experiment import load_experiment
    from ensemble_mde.training.base import base_config

    study_lr = {"adabins": 6.13590727341e-4, "bts": 8.63310742922e-4, "ldrn": 1.232846739442e-3}
    for name in NAMES:
        cfg = load_config(["defaults", f"base/{name}"])
        train, augment = cfg["train"], cfg["augment"]
        assert cfg["model"]["pretrained"] is True
        assert (train["lr"], train["batch_size"], train["epochs"], train["weight_decay"], train["grad_clip"]) == (
            study_lr[name], 32, 25, 1e-4, 0.1)
        assert (augment["precrop"], augment["rotate_deg"], augment["crop_size"], augment["flip"]) == (
            "auto", 2.5, "auto", 0.5)
        assert (augment["color"], augment["gamma"], augment["brightness"], augment["channel"]) == (
            0.5, [0.9, 1.1], [0.75, 1.25], [0.9, 1.1])
        assert base_config(name, preset="cpu")["model"]["pretrained"] is False
    study = load_experiment(packaged_config_path("experiments/nyu_sg"))
    assert study["compare"]["flip_tta"] is True
    assert study["data"]["path"].endswith("nyudepthv2_train_files_with_gt.txt")
    assert study["bases"][0]["overrides"]["data.test_root"].endswith("official_splits/test")


def test_a_run_from_before_the_study_layout_is_one_line(capsys, tmp_path):
    """An old GhostNet run (tuned widths, `pretrained_path`): its weights cannot fit, and
    evaluate says so in one line; an old config's `pretrained_path` and `color_range` read as
    today's keys."""
    from ensemble_mde import runs
    from ensemble_mde.config import load_config, upgrade_saved
    from ensemble_mde.io import atomic_save
    from test_bad_input import run

    cfg = load_config(["defaults", "base/bts"])
    old = {**cfg, "model": {"name": "bts", "min_depth": 0.001, "max_depth": 10.0, "pretrained_path": None,
                            "widths": [3072, 1024, 384, 160, 96, 48]}}
    old["augment"] = {k: v for k, v in cfg["augment"].items() if k not in ("gamma", "brightness", "contrast",
                                                                          "channel", "precrop")}
    old["augment"]["color_range"] = [0.9, 1.1]
    atomic_save({**runs.checkpoint_payload(torch.nn.Linear(1, 1), old)}, tmp_path / "old" / "best.pt")
    code, line = run(capsys, "evaluate", tmp_path / "old", "--json")
    assert code == 2 and line.startswith("error: model.widths: this bts run was made before the learner took "
                                         "the SG study's layout")
    upgraded = upgrade_saved({"model": {"pretrained_path": "/w.pth"}, "meta": {"pretrained_path": None},
                              "augment": {"color_range": [0.8, 1.2]}})
    assert upgraded["model"] == {"pretrained": "/w.pth"} and upgraded["meta"] == {"pretrained": False}
    assert upgraded["augment"] == {"gamma": [1.0, 1.0], "brightness": [0.8, 1.2], "contrast": [0.8, 1.2],
                                   "channel": [0.8, 1.2]}
