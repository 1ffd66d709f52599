"""Float export and ensemble uncertainty (issue 23): `predict` writes float32 metres beside the
16-bit PNG, and for a stacked ensemble its weights and the spread of its bases (.npy + PNG);
`compare --uncertainty` scores that spread by sparsification (AUSE) for every variant that has
one and draws the curves beside the oracle's. In-process CLI (`ensemble_mde.cli.main`)."""


import numpy as np
import pytest
import torch
from PIL import Image

from ensemble_mde import runs
from ensemble_mde.config import load_config
from ensemble_mde.io import atomic_save
from ensemble_mde.loading import build_ensemble, build_learner
from test_hostile_input import cli

PREDICT = ["--device", "cpu"]


def meter_checkpoint(folder, seed: int):
    """A meter_xxs checkpoint with fresh weights (seeded), 32x32 input, its output layer scaled
    to depths of about 1-5 m (fresh, it says about 1 cm)."""
    cfg = load_config(["defaults", "base/meter_xxs"], overrides=["data.size=[32, 32]"])
    torch.manual_seed(seed)
    model = build_learner(cfg)
    with torch.no_grad():
        model.decoder.conv2d_out.weight.copy_(model.decoder.conv2d_out.weight.abs() * 300)
    atomic_save(runs.checkpoint_payload(model, cfg), folder / "best.pt")
    return folder / "best.pt"


def stacked_checkpoint(folder, bases, *overrides):
    """A freeze-mode softmax ensemble over `bases` (run folders), fresh meta weights."""
    from ensemble_mde.training.meta import meta_config, resolve_bases

    cfg = meta_config(mode="freeze", bases=[str(b) for b in bases], overrides=["data.size=[32, 32]", *overrides])
    runs.with_record(cfg, {"bases": resolve_bases(cfg)})
    torch.manual_seed(0)
    ensemble = build_ensemble(cfg, init_weights=False)
    for base, folder_of_base in zip(ensemble.bases, bases):    # frozen: the bases' own weights
        base.load_state_dict(torch.load(folder_of_base / "best.pt", weights_only=True)["model"])
    atomic_save(runs.checkpoint_payload(ensemble, cfg, kind="meta"), folder / "best.pt")
    return folder / "best.pt"


def save_image(path, size=(32, 32), seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def predict(capsys, run, image, out, *extra) -> str:
    code, stdout, err = cli(capsys, "predict", run, image, "--out", out, *PREDICT, *extra)
    assert code == 0, err
    return stdout


@pytest.fixture
def two_bases(tmp_path):
    return [meter_checkpoint(tmp_path / f"meter_{seed}", seed).parent for seed in (0, 1)]


def test_the_float_depth_equals_the_16_bit_png_to_within_a_millimetre(capsys, tmp_path, two_bases):
    image = save_image(tmp_path / "room.png", size=(45, 70))       # not the input size: the depth is resized
    out = tmp_path / "pred"
    stdout = predict(capsys, two_bases[0], image, out)
    depth = np.load(out / "room_depth.npy")
    png_mm = np.asarray(Image.open(out / "room_depth.png")).astype(np.float64)
    assert depth.dtype == np.float32 and depth.shape == png_mm.shape == (45, 70)
    assert np.abs(depth * 1000.0 - png_mm).max() <= 0.5 + 1e-3 and depth.std() > 0
    assert str(out / "room_depth.npy") in stdout
    # a single learner has no weights and no spread
    assert sorted(p.name for p in out.iterdir()) == ["room_depth.npy", "room_depth.png", "room_depth_color.png"]


def test_a_stacked_ensemble_writes_its_weights_and_the_spread_of_its_bases_under_them(capsys, tmp_path, two_bases):
    meta = stacked_checkpoint(tmp_path / "meta", two_bases)
    image = save_image(tmp_path / "room.png")                      # at the input size: nothing is resampled
    out = tmp_path / "pred"
    predict(capsys, meta, image, out)
    base_depths = []
    for i, base in enumerate(two_bases):
        predict(capsys, base, image, tmp_path / f"base_{i}")
        base_depths.append(np.load(tmp_path / f"base_{i}" / "room_depth.npy").astype(np.float64))
    weights = np.load(out / "room_weights.npy").astype(np.float64)
    sigma = np.load(out / "room_uncertainty.npy").astype(np.float64)
    depth = np.load(out / "room_depth.npy").astype(np.float64)
    assert weights.shape == (2, 32, 32) and sigma.shape == depth.shape == (32, 32)
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(depth, weights[0] * base_depths[0] + weights[1] * base_depths[1], atol=1e-4)
    # K = 2: sigma^2 = w0 (d0 - D)^2 + w1 (d1 - D)^2 = w0 w1 (d0 - d1)^2
    np.testing.assert_allclose(sigma, np.sqrt(weights[0] * weights[1]) * np.abs(base_depths[0] - base_depths[1]),
                               atol=1e-4)
    assert sigma.max() > 0.01
    with Image.open(out / "room_uncertainty.png") as png:
        assert png.info["Source"] == str(image)
    # with flip TTA the spread covers both passes; still one map per output, no other file
    predict(capsys, meta, image, out, "--flip-tta")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"room{s}" for s in ("_depth.png", "_depth.npy", "_depth_color.png", "_weights.png", "_weights.npy",
                             "_uncertainty.npy", "_uncertainty.png"))
    assert np.load(out / "room_uncertainty.npy").shape == (32, 32)


def test_a_relaxed_ensemble_says_it_has_no_uncertainty(capsys, tmp_path, two_bases):
    meta = stacked_checkpoint(tmp_path / "meta", two_bases, "meta.head=relaxed")
    stdout = predict(capsys, meta, save_image(tmp_path / "room.png"), tmp_path / "pred")
    assert stdout.rstrip().endswith("; no weight map or uncertainty: the relaxed head predicts depth, not weights")
    assert not list((tmp_path / "pred").glob("*uncertainty*")) and not list((tmp_path / "pred").glob("*weights*"))


def test_the_npy_files_share_their_image_stem_and_never_replace_a_file_predict_did_not_write(capsys, tmp_path,
                                                                                             two_bases):
    meta = stacked_checkpoint(tmp_path / "meta", two_bases)
    image = save_image(tmp_path / "room.png")
    out = tmp_path / "pred"
    predict(capsys, meta, image, out)
    first = sorted(p.name for p in out.iterdir())
    predict(capsys, meta, image, out)                               # the image's own outputs are replaced
    assert sorted(p.name for p in out.iterdir()) == first
    mine = out / "hall_depth.npy"                                   # a user's array where hall's would go
    np.save(mine, np.zeros(3))
    hall = save_image(tmp_path / "hall.png", seed=1)
    stdout = predict(capsys, meta, hall, out)
    assert np.load(mine).tolist() == [0.0, 0.0, 0.0]
    assert (out / "hall_png_depth.npy").is_file() and str(out / "hall_png_uncertainty.npy") in stdout
    assert not (out / "hall_depth.png").exists()
