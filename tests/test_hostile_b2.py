"""Hostile input to `predict` (issue 24, items 12, 21, 22): outputs never replace another
image's outputs or an input, nor are half-written; no model output (a learner or the relaxed
head of an ensemble) leaves [min_depth, max_depth]; photos are turned upright as their EXIF
orientation says. In-process (`ensemble_mde.cli.main`): the process does not matter here."""

import errno
import io

import numpy as np
import pytest
import torch
from PIL import Image

from ensemble_mde import runs
from ensemble_mde.cli import main
from ensemble_mde.config import load_config
from ensemble_mde.io import atomic_save
from ensemble_mde.loading import build_ensemble, build_learner


def cli(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `ensemble ARGS` run in this process."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def predict(capsys, run, *images, out) -> str:
    """stdout of a `predict` that must succeed."""
    code, stdout, err = cli(capsys, "predict", run, *images, "--out", out, "--device", "cpu")
    assert code == 0, err
    return stdout


def written(stdout: str) -> list[str]:
    """The depth PNGs a predict run says it wrote, one per image, in order."""
    return [line.split(" -> ")[1].split(", ")[0] for line in stdout.splitlines() if " -> " in line]


def save_image(path, height: int, width: int = 32, seed: int = 0, **save_args):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
        path, **save_args)
    return path


def shape(path) -> tuple:
    return np.asarray(Image.open(path)).shape


@pytest.fixture
def meter_run(tmp_path):
    """A meter_xxs checkpoint with fresh weights (its depth varies with the image), 32x32 input."""
    cfg = load_config(["defaults", "base/meter_xxs"], overrides=["data.size=[32, 32]"])
    torch.manual_seed(0)
    path = tmp_path / "meter" / "best.pt"
    atomic_save(runs.checkpoint_payload(build_learner(cfg), cfg), path)
    return path


# ------------------------------------------------------------------ 12: outputs never collide

def test_predict_never_replaces_what_another_image_left_in_out(capsys, tmp_path, meter_run):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    first, second = save_image(tmp_path / "a" / "kitchen.png", 24), save_image(tmp_path / "b" / "kitchen.jpg", 40)
    out = tmp_path / "pred"
    assert written(predict(capsys, meter_run, first, out=out)) == [str(out / "kitchen_depth.png")]
    [other] = written(predict(capsys, meter_run, second, out=out))      # a later call, another kitchen
    assert other != str(out / "kitchen_depth.png") and shape(other) == (40, 32)
    assert shape(out / "kitchen_depth.png") == (24, 32)                  # the first image's depth is still there
    files = sorted(p.name for p in out.iterdir())
    assert written(predict(capsys, meter_run, first, out=out)) == [str(out / "kitchen_depth.png")]
    assert sorted(p.name for p in out.iterdir()) == files                # its own earlier outputs are replaced


def test_predict_never_writes_over_an_input_or_a_file_it_did_not_write(capsys, tmp_path, meter_run):
    photos = tmp_path / "photos"
    photos.mkdir()
    room, room_depth = save_image(photos / "room.png", 24, seed=1), save_image(photos / "room_depth.png", 40, seed=2)
    (photos / "hall_depth_color.png").write_bytes(b"my own notes")
    hall = save_image(photos / "hall.png", 32, seed=3)
    before = {p: p.read_bytes() for p in (room, room_depth, photos / "hall_depth_color.png")}
    stdout = predict(capsys, meter_run, room, room_depth, hall, out=photos)   # --out is the photos' folder
    assert {p: p.read_bytes() for p in before} == before
    assert [shape(p) for p in written(stdout)] == [(24, 32), (40, 32), (32, 32)]


def test_the_same_file_twice_and_a_file_named_like_its_copy_get_three_names(capsys, tmp_path, meter_run):
    kitchen, kitchen_2 = save_image(tmp_path / "kitchen.png", 24), save_image(tmp_path / "kitchen_2.png", 40)
    names = written(predict(capsys, meter_run, kitchen, kitchen, kitchen_2, out=tmp_path / "pred"))
    assert len(set(names)) == 3 and shape(names[2]) == (40, 32)


def test_a_disk_that_fills_while_predict_writes_leaves_no_half_written_map(capsys, tmp_path, meter_run, monkeypatch):
    save = Image.Image.save

    def half_then_full(image, fp, format=None, **params):     # the first half of the file, then ENOSPC
        data = io.BytesIO()
        save(image, data, format=format or "PNG", **params)
        if isinstance(fp, (str, bytes)) or hasattr(fp, "__fspath__"):
            with open(fp, "wb") as f:
                f.write(data.getvalue()[:len(data.getvalue()) // 2])
        else:
            fp.write(data.getvalue()[:len(data.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    image = save_image(tmp_path / "room.png", 24)
    monkeypatch.setattr(Image.Image, "save", half_then_full)
    out = tmp_path / "pred"
    code, _, err = cli(capsys, "predict", meter_run, image, "--out", out, "--device", "cpu")
    assert code == 2 and err.strip() == "error: No space left on device"
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------ 21: depth in [min_depth, max_depth]

@pytest.mark.parametrize("bias, printed, stored_mm", [(-5.0, "depth 0.00-0.00 m", 1),     # 1e-9 m: not "no depth"
                                                      (50.0, "depth 10.00-10.00 m", 10000)])  # 50 m: the 10 m cap
def test_a_relaxed_ensemble_predicts_depth_inside_its_range(capsys, tmp_path, meter_run, bias, printed, stored_mm):
    from ensemble_mde.training.meta import meta_config, resolve_bases

    second = tmp_path / "meter2" / "best.pt"
    atomic_save(torch.load(meter_run, weights_only=True), second)
    cfg = meta_config(mode="freeze", bases=[str(meter_run.parent), str(second.parent)],
                      overrides=["meta.head=relaxed", "data.size=[32, 32]"])
    runs.with_record(cfg, {"bases": resolve_bases(cfg)})
    ensemble = build_ensemble(cfg, init_weights=False)
    with torch.no_grad():                        # the relaxed head says `bias` metres everywhere
        ensemble.meta.relax.weight.zero_()
        ensemble.meta.relax.bias.fill_(bias)
    meta = tmp_path / "meta" / "best.pt"
    atomic_save(runs.checkpoint_payload(ensemble, cfg, kind="meta"), meta)
    image = save_image(tmp_path / "room.png", 24)
    stdout = predict(capsys, meta, image, out=tmp_path / "pred")
    assert stdout.startswith(f"{image}: {printed} ")
    assert np.unique(np.asarray(Image.open(tmp_path / "pred" / "room_depth.png"))).tolist() == [stored_mm]


def test_a_depth_below_half_a_millimetre_is_stored_as_1_mm_not_as_no_depth(capsys, tmp_path):
    cfg = load_config(["defaults", "base/meter_xxs"], overrides=["data.size=[32, 32]", "model.min_depth=0.0001"])
    torch.manual_seed(0)
    model = build_learner(cfg)
    with torch.no_grad():  # an output layer that says "far below the floor" everywhere: 0.1 mm after the clip
        model.decoder.conv2d_out.weight.copy_(-model.decoder.conv2d_out.weight.abs() * 50)
    run = tmp_path / "neg" / "best.pt"
    atomic_save(runs.checkpoint_payload(model, cfg), run)
    predict(capsys, run, save_image(tmp_path / "room.png", 24), out=tmp_path / "pred")
    assert np.unique(np.asarray(Image.open(tmp_path / "pred" / "room_depth.png"))).tolist() == [1]


def test_the_ensemble_clips_as_its_learners_do_and_still_learns_outside_its_range():
    from conftest import TinyLearner
    from meta_learner import StackedEnsemble, WeightingNetwork

    meta = WeightingNetwork(2, "rgb+d", head="relaxed")
    ensemble = StackedEnsemble([TinyLearner(0), TinyLearner(1)], meta, ["a", "b"], min_depth=0.5, max_depth=4.0)
    with torch.no_grad():
        meta.relax.bias.fill_(100.0)
    depth = ensemble(torch.rand(2, 3, 32, 32))["depth"]
    assert float(depth.detach().min()) == float(depth.detach().max()) == 4.0
    depth.sum().backward()                       # the gradient passes through the clip
    assert float(meta.relax.bias.grad.abs()) > 0


# ------------------------------------------------------------------ 22: EXIF orientation

def test_a_phone_photo_is_predicted_as_it_is_seen_upright(capsys, tmp_path, meter_run):
    stored = np.random.default_rng(4).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    upright = tmp_path / "upright.png"
    Image.fromarray(np.rot90(stored, k=-1).copy()).save(upright)   # orientation 6: shown turned 90 degrees clockwise
    depths = {}
    for orientation in (6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        photo = tmp_path / f"phone{orientation}.png"
        Image.fromarray(stored).save(photo, exif=exif)
        [depths[orientation]] = written(predict(capsys, meter_run, photo, out=tmp_path / "pred"))
    [depths["upright"]] = written(predict(capsys, meter_run, upright, out=tmp_path / "pred"))
    maps = {k: np.asarray(Image.open(v)) for k, v in depths.items()}
    assert maps[6].shape == (56, 40) and maps[6].std() > 0
    np.testing.assert_array_equal(maps[6], maps["upright"])
    assert not np.array_equal(maps[8], maps["upright"])
