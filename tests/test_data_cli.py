"""`ensemble data check/show/synth` as a user runs them; every bad input is exit code 2 and
one line `error: <path>: <problem>`, with no output file left behind."""

import json

import numpy as np
import pytest
from PIL import Image

from ensemble_mde.cli import main
from ensemble_mde.data import build_dataset
from ensemble_mde.data.readers import read_bts_list
from test_data_readers import config, write_densedepth
from conftest import SHARED_DATA


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_check_reports_splits_resolution_encoding_and_holes(tmp_path, capsys):
    root = write_densedepth(tmp_path / "nyu")
    code, out, _ = run(capsys, "data", "check", root, "--json")
    report = json.loads(out)
    assert code == 0 and report["format"] == "densedepth" and report["errors"] == []
    train, val, test = (report["splits"][k] for k in ("train", "val", "test"))
    assert (train["count"], val["count"], test["count"]) == (4, 2, 2) and train["scenes"] == 2
    assert train["depth_encoding"] == {"8-bit PNG, v/255*10 m": 4} and test["depth_encoding"] == {"16-bit PNG, mm": 2}
    assert test["resolution"] == {"24x32": 2} and test["hole_fraction"] == pytest.approx(1 / 32, abs=1e-4)
    assert 0.5 <= test["depth_range_m"][0] and test["depth_range_m"][1] < 9.0
    code, out, _ = run(capsys, "data", "check", root)
    assert code == 0 and out.startswith(f"{root}: densedepth\n") and "holes 3.1%" in out


def _break_missing(root):
    path = root / "data/nyu2_test/00001_depth.png"
    path.unlink()
    return path, "file not found (listed in"


def _break_corrupt_png(root):
    path = root / "data/nyu2_test/00000_depth.png"
    path.write_bytes(b"this is not a PNG")
    return path, "not a readable image"


def _break_truncated_jpg(root):
    path = root / "data/nyu2_train/kitchen_0001_out/1.jpg"
    path.write_bytes(path.read_bytes()[:200])
    return path, "corrupt or truncated image"


def _break_size_mismatch(root):
    path = root / "data/nyu2_test/00001_depth.png"
    Image.fromarray(np.full((12, 16), 2000, np.uint16)).save(path)
    return path, "depth is 12x16 but its RGB"


def _break_no_valid_pixel(root):
    path = root / "data/nyu2_test/00000_depth.png"
    Image.fromarray(np.zeros((24, 32), np.uint16)).save(path)
    return path, "depth map has no valid pixel"


@pytest.mark.parametrize("damage", [_break_missing, _break_corrupt_png, _break_truncated_jpg,
                                    _break_size_mismatch, _break_no_valid_pixel])
def test_bad_files_are_one_error_line_naming_the_file(tmp_path, capsys, damage):
    root = write_densedepth(tmp_path / "nyu")
    bad, problem = damage(root)
    code, _, err = run(capsys, "data", "check", root)
    assert code == 2 and one_error_line(err).startswith(f"error: {bad}: {problem}")
    split = "train" if "nyu2_train" in str(bad) else "test"
    picture = tmp_path / "show.png"
    code, _, err = run(capsys, "data", "show", root, "--split", split, "--n", "8", "--out", picture)
    assert code == 2 and one_error_line(err).startswith(f"error: {bad}: {problem}")
    assert not picture.exists() and list(tmp_path.glob("*show*")) == []


def test_missing_path_and_unknown_format(tmp_path, capsys):
    code, _, err = run(capsys, "data", "check", tmp_path / "nope")
    assert code == 2 and one_error_line(err) == f"error: {tmp_path / 'nope'}: no such file or folder"
    (tmp_path / "notes.txt").write_text("just some notes\n")
    code, _, err = run(capsys, "data", "check", tmp_path)
    assert code == 2 and one_error_line(err).startswith(f"error: {tmp_path}: unknown dataset format")
    code, _, err = run(capsys, "data", "check", tmp_path, "--set", "data.format=cityscapes")
    assert code == 2 and one_error_line(err) == ("error: --set data.format=cityscapes: data.format must be one of "
                                                 "auto, densedepth, bts, kitti, nyu_labeled, got 'cityscapes'")


def test_show_writes_a_grid(tmp_path, capsys):
    root = write_densedepth(tmp_path / "nyu")
    picture = tmp_path / "figs" / "samples.png"
    code, out, _ = run(capsys, "data", "show", root, "--out", picture, "--n", "3", "--augment")
    image = Image.open(picture)
    assert code == 0 and out.strip() == f"wrote {picture}" and image.size[0] > 300 and image.size[1] > 200


def test_synth_writes_a_dataset_that_check_reads(tmp_path, capsys):
    out_dir = tmp_path / "synth"
    code, _, _ = run(capsys, "data", "synth", "--out", out_dir, "--train", 4, "--val", 2, "--test", 2,
                     "--size", "24x32", "--seed", 1)
    assert code == 0
    code, out, _ = run(capsys, "data", "check", out_dir, "--json")
    report = json.loads(out)
    assert code == 0 and report["format"] == "densedepth" and report["synthetic"]
    assert [report["splits"][k]["count"] for k in ("train", "val", "test")] == [4, 2, 2]
    assert report["splits"]["test"]["resolution"] == {"24x32": 2}
    code, out, _ = run(capsys, "data", "check", out_dir)
    assert out.startswith(f"{out_dir}: densedepth (synthetic)\n")


REAL = SHARED_DATA


@pytest.mark.skipif(not (REAL / "nyu_bts_sample").exists(), reason="reference data not present")
def test_real_nyu_sample_and_list_files(capsys):
    test = build_dataset(config(REAL / "nyu_bts_sample"), "test")
    s = test[0]
    assert test.format == "bts" and s["rgb"].shape == (3, 120, 160) and s["scene"] == "bookstore_0001d"
    assert float((s["depth"] == 0).float().mean()) == pytest.approx(0.338, abs=0.005)
    assert float(s["depth"].max()) == pytest.approx(10.0)  # 16-bit mm: 10000 -> 10 m
    code, out, _ = run(capsys, "data", "check", REAL / "nyu_bts_sample")
    test_line = next(line for line in out.splitlines() if line.strip().startswith("test"))
    assert code == 0 and "120x160 (HxW)" in test_line and "16-bit PNG, mm" in test_line and "holes 33.8%" in test_line
    rows = read_bts_list(REAL / "nyu_splits/nyudepthv2_train_files_with_gt.txt")
    assert len(rows) == 24231 and rows[0] == ("/kitchen_0028b/rgb_00045.jpg", "/kitchen_0028b/sync_depth_00045.png",
                                              pytest.approx(518.8579))    # as listed: relative to the image root
    assert len(read_bts_list(REAL / "nyu_splits/nyudepthv2_test_files_with_gt.txt")) == 654
