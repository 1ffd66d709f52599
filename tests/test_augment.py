"""Augmentation keeps RGB, depth and extra maps aligned; it is seeded per (seed, epoch,
index) so DataLoader workers do not change it."""

import numpy as np
import pytest
import torch

from ensemble_mde.config import load_config
from ensemble_mde.data import augment_rng, augment_sample, build_dataset
from ensemble_mde.data.augment import AugmentParams, crop_size, draw_params, jitter_color, warp
from ensemble_mde.errors import ConfigError
from test_data_readers import write_densedepth, zip_folder

H, W = 24, 32


def cfg_augment(**changes) -> dict:
    """The packaged augmentation without its NYU pre-crop (these frames are tiny coordinate maps)."""
    return {**load_config(["defaults"])["augment"], "precrop": None, **changes}


def coordinate_sample() -> dict:
    """RGB holds each pixel's own coordinates (r = (x+0.5)/W, g = (y+0.5)/H, b = 1) and
    depth encodes them as 1 + x + W*y: after any warp both must name the same source pixel."""
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    rgb = torch.stack(((x + 0.5) / W, (y + 0.5) / H, torch.ones(H, W)))
    return {"rgb": rgb, "depth": (1 + x + W * y)[None], "name": "n", "scene": "s", "focal": 1.0, "index": 0}


def test_rgb_depth_and_extra_maps_stay_aligned_under_rotation_crop_and_flip():
    cfg = cfg_augment(color=0.0)  # geometry only: RGB values keep their meaning
    flips = angles = 0
    for index in range(12):
        sample = coordinate_sample()
        out = augment_sample(sample, augment_rng(7, 0, index), cfg, extra_maps={"base_depths": sample["rgb"][:2] * 10})
        params = draw_params(augment_rng(7, 0, index), cfg, H, W)
        flips += params.flip
        angles += abs(params.angle) > 0.1
        assert out["rgb"].shape == (3, 21, 27) and out["depth"].shape == (1, 21, 27)  # round(24*416/480), ...
        # bilinear extra maps follow the bilinear RGB exactly, including the zero-padded border
        assert torch.allclose(out["base_depths"], out["rgb"][:2] * 10, atol=1e-5)
        d = out["depth"][0]
        inside = (d > 0) & (out["rgb"][2] > 0.9999)  # depth pixel from the frame, RGB not blended with the outside
        assert inside.float().mean() > 0.8
        col, row = (d[inside] - 1) % W, torch.div(d[inside] - 1, W, rounding_mode="floor")
        x_src = out["rgb"][0][inside] * W - 0.5
        y_src = out["rgb"][1][inside] * H - 0.5
        # nearest depth is at most half a pixel from the bilinear RGB sample point; a 1-px shift or flip fails
        assert (col - x_src).abs().max() <= 0.5 + 1e-3 and (row - y_src).abs().max() <= 0.5 + 1e-3
    assert 0 < flips < 12 and angles > 6  # the transforms did happen


def test_rotation_fills_depth_from_outside_with_zero_and_never_blends():
    depth = torch.full((1, H, W), 3.0)
    depth[:, :, W // 2:] = 7.0
    params = AugmentParams(angle=2.5, crop=(0, 0, H, W), flip=False, color=None)
    out = warp(depth, params, "nearest")
    zero = out[0] == 0
    assert zero.sum() > 0 and not zero[1:-1, 1:-1].any()  # only border pixels rotated in from outside
    assert zero[0, 0] != zero[0, -1]  # and at opposite corners: a rotation, not a shift
    assert set(out.unique().tolist()) == {0.0, 3.0, 7.0}  # no blended values


def test_colour_jitter_changes_rgb_only_and_stays_in_range():
    sample = coordinate_sample()
    out = augment_sample(sample, augment_rng(0, 0, 0), cfg_augment(color=1.0, rotate_deg=0.0, crop=False, flip=0.0))
    assert torch.equal(out["depth"], sample["depth"])
    assert not torch.allclose(out["rgb"], sample["rgb"]) and out["rgb"].min() >= 0 and out["rgb"].max() <= 1
    bright = jitter_color(torch.full((3, 2, 2), 0.5), (1.0, 1.1, 1.0, (1.0, 1.0, 1.0)))
    assert torch.allclose(bright, torch.full((3, 2, 2), 0.55))
    assert jitter_color(torch.ones(3, 1, 1), (1.0, 1.1, 1.1, (1.1, 1.1, 1.1))).max() == 1.0  # clamped


def test_colour_jitter_is_gamma_then_brightness_then_channel_factors():
    """The BTS/SG loader's order: rgb ** gamma * brightness * (r, g, b) factors, clamped."""
    rgb = torch.tensor([0.25, 0.5, 0.81]).view(3, 1, 1).expand(3, 1, 2)
    out = jitter_color(rgb, (0.5, 1.2, 1.0, (0.9, 1.0, 1.1)))
    expected = torch.tensor([0.5 * 1.2 * 0.9, 0.5 ** 0.5 * 1.2, min(1.0, 0.9 * 1.2 * 1.1)]).view(3, 1, 1)
    torch.testing.assert_close(out, expected.expand(3, 1, 2))
    params = draw_params(augment_rng(0, 0, 1), cfg_augment(color=1.0), H, W)  # the packaged NYU ranges
    gamma, brightness, contrast, channels = params.color
    assert 0.9 <= gamma <= 1.1 and 0.75 <= brightness <= 1.25 and contrast == 1.0
    assert all(0.9 <= c <= 1.1 for c in channels)


def test_bts_precrop_on_real_frames_only():
    """BTS's box (43, 45, 608, 472) of a 480x640 frame is cut before the 416x544 crop; the
    crop keeps BTS's size (it is drawn inside the 427x565 box); synthetic frames keep it all."""
    cfg = cfg_augment(precrop="auto", rotate_deg=0.0, flip=0.0, color=0.0)
    y, x = torch.meshgrid(torch.arange(480.0), torch.arange(640.0), indexing="ij")
    sample = {"rgb": torch.zeros(3, 480, 640), "depth": (1 + x + 640 * y)[None], "name": "n", "scene": "s"}
    for index in range(4):
        depth = augment_sample(sample, augment_rng(0, 0, index), cfg)["depth"][0]
        assert depth.shape == (416, 544)
        top, left = divmod(int(depth[0, 0]) - 1, 640)
        assert 45 <= top and top + 416 <= 472 and 43 <= left and left + 544 <= 608
    synthetic = [augment_sample(sample, augment_rng(0, 0, i), cfg, synthetic=True)["depth"][0] for i in range(8)]
    unboxed = [augment_sample(sample, augment_rng(0, 0, i), {**cfg, "precrop": None})["depth"][0] for i in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(synthetic, unboxed))
    corners = [divmod(int(d[0, 0]) - 1, 640) for d in synthetic]          # drawn over the whole frame
    assert any(top < 45 or left < 43 or top + 416 > 472 or left + 544 > 608 for top, left in corners)
    with pytest.raises(ConfigError, match="augment.precrop"):
        augment_sample(sample, augment_rng(0, 0, 0), {**cfg, "precrop": [0, 0, 700, 480]})


def test_crop_size_scales_416x544_with_the_frame():
    cfg = cfg_augment()
    assert crop_size(cfg, 480, 640) == (416, 544)
    assert crop_size(cfg, 240, 320) == (208, 272)
    assert crop_size({**cfg, "crop": False}, 240, 320) == (240, 320)
    assert crop_size({**cfg, "crop_size": [100, 120]}, 240, 320) == (100, 120)
    with pytest.raises(ConfigError, match="larger than"):
        crop_size({**cfg, "crop_size": [300, 120]}, 240, 320)


def _batches(dataset, workers: int) -> list[dict]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=False, num_workers=workers)
    return list(loader)


def test_same_augmentation_with_0_or_2_workers_and_per_epoch(tmp_path):
    root = write_densedepth(tmp_path / "nyu", scenes={f"room_{i}": 2 for i in range(3)})
    archive = zip_folder(root, tmp_path / "nyu.zip")  # zip handles reopened in each worker
    cfg = load_config(["defaults"], overrides=[f"data.path={archive}", "data.val_fraction=0.3", "run.seed=3"])
    dataset = build_dataset(cfg, "train")
    assert dataset.augment_cfg is not None and len(dataset) == 4
    dataset.set_epoch(1)
    serial, parallel = _batches(dataset, 0), _batches(dataset, 2)
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["depth"], b["depth"]) and a["name"] == b["name"]
    dataset.set_epoch(2)
    assert not torch.equal(_batches(dataset, 0)[0]["rgb"], serial[0]["rgb"])  # a new epoch, a new draw
    dataset.set_epoch(1)
    assert torch.equal(_batches(dataset, 0)[0]["rgb"], serial[0]["rgb"])  # a resumed epoch replays
    assert np.isclose(float(serial[0]["focal"][0]), 518.8579 * W / 640)
