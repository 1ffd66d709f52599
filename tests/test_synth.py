"""Synthetic indoor scenes: exact z-depth against analytic geometry, the DenseDepth layout on
disk, 16-bit millimetre depth, determinism across seeds and worker counts."""

import json
import math
import re

import numpy as np
import pytest
from PIL import Image

from ensemble_mde.data import synth
from ensemble_mde.errors import ConfigError

SIZE = (48, 64)


def _empty_room(objects=()):
    """A 6 x 5 x 3 m room with grey walls, the lamp in the middle under the ceiling."""
    grey = synth.Material.plain([0.5, 0.5, 0.5])
    light = synth.Light((3.0, 2.5, 2.8), 1.0, 3.0, 0.2, np.ones(3, np.float32))
    return synth.Room.build((6.0, 5.0, 3.0), [grey] * 6, list(objects), light)


def _pixel_offsets(size):
    """xc [1, W] and yc [H, 1]: (col - cx) / fx and (row - cy) / fy."""
    fx, fy, cx, cy = synth.intrinsics(size)
    return (np.arange(size[1]) - cx)[None, :] / fx, (np.arange(size[0]) - cy)[:, None] / fy


def test_intrinsics_scale_nyu_to_the_output_size():
    assert synth.intrinsics((480, 640)) == (518.8579, 519.4696, 325.5824, 253.7362)
    fx, fy, cx, cy = synth.intrinsics((240, 320))
    assert (fx, fy, cx, cy) == pytest.approx((259.42895, 259.7348, 162.7912, 126.8681))


def test_level_camera_in_empty_room_matches_analytic_z_depth():
    # camera 1.5 m high at (1, 2.5) looking along +x: ray d = (1, -xc, -yc), z-depth = ray parameter
    rgb, depth = synth.render_view(_empty_room(), synth.Pose(1.0, 2.5, 1.5, yaw=0.0, pitch=0.0), SIZE)
    xc, yc = _pixel_offsets(SIZE)
    xc, yc = np.broadcast_to(xc, SIZE), np.broadcast_to(yc, SIZE)
    with np.errstate(divide="ignore"):
        candidates = [
            np.full(SIZE, 5.0),  # far wall x = 6, faced straight on: constant depth
            np.where(xc > 0, 2.5 / xc, np.inf),  # wall y = 0 (to the right)
            np.where(xc < 0, -2.5 / xc, np.inf),  # wall y = 5
            np.where(yc > 0, 1.5 / yc, np.inf),  # floor
            np.where(yc < 0, -1.5 / yc, np.inf),  # ceiling
        ]
    expected = np.min(candidates, axis=0)
    assert depth.dtype == np.float32 and depth.shape == SIZE
    np.testing.assert_allclose(depth, expected, rtol=1e-5)
    assert (expected == 5.0).sum() > 100  # the far wall fills the middle of the view
    assert rgb.shape == (*SIZE, 3) and rgb.dtype == np.uint8


def test_primitives_hit_at_their_analytic_depth():
    grey = synth.Material.plain([0.6, 0.3, 0.2])
    pose = synth.Pose(1.0, 2.5, 1.5, yaw=0.0, pitch=0.0)
    xc, yc = _pixel_offsets(SIZE)
    # box x in [3, 4], y in [2, 3], z in [0, 2]: its face x = 3 is 2 m in front of the camera
    box = synth.Box(3.5, 2.5, 0.5, 0.5, 0.0, 2.0, 0.0, grey)
    _, depth = synth.render_view(_empty_room([box]), pose, SIZE)
    on_face = (np.abs(2 * xc) < 0.45) & (np.abs(2 * yc) < 0.45)  # y = 2.5 - 2 xc, z = 1.5 - 2 yc inside the face
    assert on_face.sum() > 20
    np.testing.assert_allclose(depth[on_face], 2.0, rtol=1e-6)
    off_face = (np.abs(2 * xc) > 0.55) | (2 * yc < -0.55) | (2 * yc > 1.55)
    assert (depth[np.broadcast_to(off_face, SIZE)] > 2.9).all()

    # a box turned a quarter turn is the box with its half sizes swapped
    turned = synth.Box(3.5, 2.5, 0.3, 0.7, 0.0, 2.0, math.pi / 2, grey)
    swapped = synth.Box(3.5, 2.5, 0.7, 0.3, 0.0, 2.0, 0.0, grey)
    d_turned = synth.render_view(_empty_room([turned]), pose, SIZE)[1]
    d_swapped = synth.render_view(_empty_room([swapped]), pose, SIZE)[1]
    np.testing.assert_allclose(d_turned, d_swapped, rtol=1e-5)
    assert d_swapped.min() == pytest.approx(1.8, rel=1e-6)  # front face x = 3.5 - 0.7, camera at x = 1

    # sphere of radius 0.5 centred 3 m ahead on the optical axis: nearest z-depth 2.5
    ball = synth.Sphere(4.0, 2.5, 1.5, 0.5, grey)
    _, depth = synth.render_view(_empty_room([ball]), pose, SIZE)
    assert depth.min() == pytest.approx(2.5, abs=2e-3)
    assert depth.min() >= 2.5 - 1e-5

    # vertical cylinder of radius 0.4 around x = 3, y = 2.5: the column nearest cx meets it near x = 2.6
    post = synth.Cylinder(3.0, 2.5, 0.4, 0.0, 2.5, grey)
    _, depth = synth.render_view(_empty_room([post]), pose, SIZE)
    col = int(round(synth.intrinsics(SIZE)[2]))
    assert depth[:, col].min() == pytest.approx(1.6, abs=2e-3)


def test_frames_have_valid_depth_and_texture():
    for index in (0, 5, 6, 13):
        rgb, depth = synth.render_frame(3, "val", index, SIZE)
        assert rgb.shape == (*SIZE, 3) and rgb.dtype == np.uint8
        assert depth.shape == SIZE and depth.dtype == np.float32
        assert synth.MIN_DEPTH <= depth.min() and depth.max() <= synth.MAX_DEPTH
        assert depth.max() - depth.min() > 0.3  # a room, not a flat card
        assert rgb.std() > 5
    a = synth.render_frame(3, "val", 0, SIZE)
    b = synth.render_frame(3, "val", 1, SIZE)  # same room, another view
    assert not np.array_equal(a[1], b[1])


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthesize_writes_the_densedepth_layout(tmp_path):
    counts = {"train": 7, "val": 2, "test": 3}
    summary = synth.synthesize(tmp_path, counts=counts, size=SIZE, seed=5, progress=False, workers=1)
    assert summary["counts"] == counts and summary["size"] == list(SIZE) and summary["frames_per_s"] > 0

    lines = {s: (tmp_path / "data" / f"nyu2_{s}.csv").read_text().splitlines() for s in counts}
    assert {s: len(v) for s, v in lines.items()} == counts
    for split in ("train", "val"):
        for line in lines[split]:
            rgb_rel, depth_rel = line.split(",")
            assert re.fullmatch(rf"data/nyu2_{split}/room_\d{{5}}_out/(\d+)\.jpg", rgb_rel), line
            assert depth_rel == rgb_rel[:-4] + ".png"
            assert (tmp_path / rgb_rel).is_file() and (tmp_path / depth_rel).is_file()
    assert lines["test"][1] == "data/nyu2_test/00001_colors.png,data/nyu2_test/00001_depth.png"

    meta = json.loads((tmp_path / "synthetic.json").read_text())
    assert meta["seed"] == 5 and meta["size"] == list(SIZE) and meta["counts"] == counts
    assert meta["intrinsics"]["fx"] == pytest.approx(518.8579 / 10)
    assert len(meta["scenes"]["train"]) == 2  # 7 frames at 6 views per room
    scenes = [s for split in ("train", "val", "test") for s in meta["scenes"][split]]
    assert len(scenes) == len(set(scenes)) == 4
    assert {line.split("/")[2][:-4] for line in lines["train"]} == set(meta["scenes"]["train"])

    # depth PNGs are 16-bit millimetres of the rendered z-depth; test RGB is lossless
    with Image.open(tmp_path / "data/nyu2_train" / f"{meta['scenes']['train'][1]}_out" / "1.png") as im:
        assert im.mode.startswith("I;16") or im.mode == "I"
        assert im.size == (SIZE[1], SIZE[0])
        mm = np.array(im)
    _, depth = synth.render_frame(5, "train", 6, SIZE)
    np.testing.assert_array_equal(mm, np.round(depth * 1000).astype(np.uint16))
    assert 500 <= mm.min() and mm.max() <= 10000
    rgb, depth = synth.render_frame(5, "test", 2, SIZE)
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "data/nyu2_test/00002_colors.png")), rgb)
    with Image.open(tmp_path / "data/nyu2_test/00002_depth.png") as im:
        np.testing.assert_array_equal(np.array(im), np.round(depth * 1000).astype(np.uint16))
    assert not list(tmp_path.rglob("*.tmp"))


def test_same_seed_same_bytes_for_any_worker_count(tmp_path):
    counts = {"train": 8, "val": 1, "test": 2}
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    synth.synthesize(one, counts=counts, size=SIZE, seed=11, progress=False, workers=1)
    synth.synthesize(two, counts=counts, size=SIZE, seed=11, progress=False, workers=2)
    synth.synthesize(other, counts=counts, size=SIZE, seed=12, progress=False, workers=1)
    a, b, c = _tree(one), _tree(two), _tree(other)
    assert len(a) == 2 * 11 + 4  # rgb + depth per frame, three lists, synthetic.json
    assert a == b
    assert a.keys() == c.keys()
    frames = [k for k in a if k.endswith((".jpg", ".png"))]
    assert all(a[k] != c[k] for k in frames)


def test_interrupted_run_leaves_no_list(tmp_path, monkeypatch):
    synth.synthesize(tmp_path, counts={"train": 2, "val": 1, "test": 1}, size=SIZE, seed=0, progress=False, workers=1)
    assert (tmp_path / "data/nyu2_train.csv").is_file()

    def crash(task):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth.write, "_run_room", crash)  # where synthesize looks it up
    with pytest.raises(KeyboardInterrupt):
        synth.synthesize(tmp_path, counts={"train": 2}, size=SIZE, seed=1, progress=False, workers=1)
    assert not list((tmp_path / "data").glob("*.csv"))
    assert not (tmp_path / "synthetic.json").exists()


@pytest.mark.parametrize("kwargs, key", [
    ({"size": (4, 64)}, "size"),
    ({"counts": {"train": -1}}, "counts"),
    ({"counts": {"training": 3}}, "counts"),
    ({"seed": -1}, "seed"),
    ({"workers": 0}, "workers"),
])
def test_bad_arguments_raise_config_error(tmp_path, kwargs, key):
    args = {"counts": {"train": 1}, "size": SIZE, "seed": 0, "progress": False, "workers": 1, **kwargs}
    with pytest.raises(ConfigError, match=key):
        synth.synthesize(tmp_path, **args)
    assert not (tmp_path / "data").exists()
