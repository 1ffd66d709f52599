"""Float export and ensemble uncertainty (issue 23): `predict` writes float32 metres beside the
16-bit PNG, and for a stacked ensemble its weights and the spread of its bases (.npy + PNG);
`compare --uncertainty` scores that spread by sparsification (AUSE) for every variant that has
one and draws the curves beside the oracle's. In-process CLI (`ensemble_mde.cli.main`)."""


import json

import numpy as np
import pytest
import torch
from PIL import Image

from ensemble_mde import runs
from ensemble_mde.config import load_config, packaged_config_path
from ensemble_mde.io import atomic_save
from ensemble_mde.loading import build_ensemble, build_learner
from test_hostile_input import cli, write_run

PREDICT = ["--device", "cpu"]
COMPARE = ["--no-compute", "--no-progress", "--device", "cpu"]


def metres(model):
    """Scale a fresh meter_xxs's output layer to depths of about 1-5 m (fresh, it says about 1 cm)."""
    with torch.no_grad():
        model.decoder.conv2d_out.weight.copy_(model.decoder.conv2d_out.weight.abs() * 300)
    return model


def meter_checkpoint(folder, seed: int):
    """A meter_xxs checkpoint with fresh weights (seeded, `metres`), 32x32 input."""
    cfg = load_config(["defaults", "base/meter_xxs"], overrides=["data.size=[32, 32]"])
    torch.manual_seed(seed)
    atomic_save(runs.checkpoint_payload(metres(build_learner(cfg)), cfg), folder / "best.pt")
    return folder / "best.pt"


def stacked_checkpoint(folder, bases, *overrides, size="[32, 32]"):
    """A freeze-mode softmax ensemble over `bases` (run folders), fresh meta weights."""
    from ensemble_mde.training.meta import meta_config, resolve_bases

    cfg = meta_config(mode="freeze", bases=[str(b) for b in bases], overrides=[f"data.size={size}", *overrides])
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


# ------------------------------------------------------------------ compare --uncertainty

@pytest.fixture
def study(tmp_path, synth_root):
    """Two finished meter_xxs runs (48x64, `metres`) and a freeze softmax ensemble over them."""
    bases = []
    for seed in (0, 1):
        folder = write_run(tmp_path / "runs" / f"meter_{seed}", synth_root, seed=seed, val_rmse=1.0 + seed)
        payload = torch.load(folder / "best.pt", weights_only=False)
        model = build_learner(payload["config"])
        model.load_state_dict(payload["model"])
        payload["model"] = metres(model).state_dict()
        atomic_save(payload, folder / "best.pt")
        bases.append(folder)
    return [*bases, stacked_checkpoint(tmp_path / "runs" / "meta", bases, size="[48, 64]").parent]


def rows_by_name(table: dict) -> dict:
    return {r["name"]: r for r in table["rows"]}


@pytest.mark.parametrize("flip", [[], ["--flip-tta"]])
def test_compare_uncertainty_scores_every_ensemble_and_baseline_and_draws_the_curves(capsys, tmp_path, study, flip):
    out = tmp_path / "report"
    code, stdout, err = cli(capsys, "compare", *study, "--uncertainty", "--format", "json", "--out", out,
                            *flip, *COMPARE)
    assert code == 0, err
    result = json.loads(stdout.split("\nwrote tables")[0])
    spread, accuracy = rows_by_name(result["uncertainty"]), rows_by_name(result["accuracy"])
    with_spread = {"Baseline (mean)", "Median", "Weighted (1/val RMSE)", "SG rgb+d freeze"}
    without = {"meter_xxs", "Oracle (selection)", "Oracle (convex blend)"}
    assert set(spread) == set(accuracy) == with_spread | without
    keys = ("ause_rmse", "aurg_rmse", "ause_abs_rel", "aurg_abs_rel")
    for name in without:
        assert all(spread[name]["values"][k] is None for k in keys), name
    for name in with_spread:      # removing by the true error is the best order at every step: AUSE >= 0
        assert all(isinstance(spread[name]["values"][k], float) for k in keys), name
        assert spread[name]["values"]["ause_rmse"] >= 0 and spread[name]["values"]["ause_abs_rel"] >= 0, name
    curves = json.loads((out / "sparsification.json").read_text())
    for name in with_spread:      # scored on the metrics' pixels: nothing removed is the table's RMSE / REL
        for metric in ("rmse", "abs_rel"):
            assert curves[name][metric]["curve"][0] == pytest.approx(accuracy[name]["values"][metric], rel=1e-6)
            assert len(curves[name][metric]["curve"]) == 51 and curves[name][metric]["oracle"][-1] == 0.0
    assert all(curves[name] is None for name in without)
    report = (out / "report.md").read_text()
    assert "## Uncertainty" in report and "![sparsification](sparsification.png)" in report
    with Image.open(out / "sparsification.png") as png:
        assert png.size[0] > 600
    assert (out / "uncertainty.md").is_file() and (out / "uncertainty.tex").is_file()


def test_compare_without_uncertainty_has_no_uncertainty_table(capsys, tmp_path, study):
    out = tmp_path / "report"
    code, stdout, err = cli(capsys, "compare", *study[:2], "--baselines", "mean", "--format", "json", "--out", out,
                            *COMPARE)
    assert code == 0, err
    assert json.loads(stdout.split("\nwrote tables")[0])["uncertainty"] is None
    assert not (out / "sparsification.json").exists() and not (out / "sparsification.png").exists()
    assert "## Uncertainty" not in (out / "report.md").read_text()


def test_the_experiment_file_turns_uncertainty_on_and_the_demo_does(tmp_path):
    from ensemble_mde.errors import ConfigError
    from ensemble_mde.experiment import load_experiment

    assert load_experiment(packaged_config_path("experiments/demo"), out=tmp_path)["compare"]["uncertainty"] is True
    experiment = {"data": {"synth": {"train": 4}}, "bases": [{"name": "meter_xxs"}], "compare": {"uncertainty": "yes"}}
    with pytest.raises(ConfigError, match="compare.uncertainty"):
        load_experiment(experiment, out=tmp_path)
