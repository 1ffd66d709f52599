"""Hostile dataset lists and depth values through `ensemble data check` (issue 24, items 13, 15
and 16): a broken list is a problem, never a silently absent split; a few NaN/inf depths are
counted; a listed file has one key however it is spelled (absolute, `./`), so repeats and
train/test overlap are caught; counts read '1 problem', not '1 problem(s)'."""

import json
from importlib import resources

import h5py
import numpy as np
import pytest

from test_data_readers import labeled_frames, write_bts, write_densedepth
from test_hostile_input import cli, error_line


def bts_folder(folder):
    return write_bts(folder, {"a_train_files.txt": [("kitchen_0001", 1), ("bath_0002", 2), ("study_0003", 3)],
                              "a_test_files.txt": [("kitchen", 9)]})


def _empty(lst):
    lst.write_bytes(b"")
    return "the {split} split is empty ({list})"


def _binary(lst):
    lst.write_bytes(bytes(range(128, 256)))
    return "{list}: not a UTF-8 text file"


def _two_columns(lst):
    lst.write_text("".join(line.rsplit(" ", 1)[0] + "\n" for line in lst.read_text().splitlines()))
    return "{list}: line 1: expected '<rgb> <depth> <focal>'"


def _four_columns(lst):
    lst.write_text("".join(line + " extra\n" for line in lst.read_text().splitlines()))
    return "{list}: line 1: expected '<rgb> <depth> <focal>'"


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("damage", [_empty, _binary, _two_columns, _four_columns])
def test_data_check_of_a_broken_bts_list_is_a_problem_not_an_absent_split(capsys, tmp_path, split, damage):
    folder = bts_folder(tmp_path / "bts")
    lst = folder / f"a_{split}_files.txt"
    problem = damage(lst).format(split=split, list=lst)
    code, out, err = cli(capsys, "data", "check", folder)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and problem in lines[0], err
    assert "ok: every listed file" not in out and f"1 problem:\n  {problem}" in out


def test_data_check_counts_a_few_nan_and_inf_depths_whose_share_rounds_to_zero(capsys, tmp_path):
    images, depths, raw = labeled_frames()
    first_test = int(resources.files("ensemble_mde.data").joinpath("nyu_labeled_test.txt").read_text().split()[0])
    raw[first_test - 1, 3, 2] = np.nan  # one frame of the 200 read (the first is always read)
    raw[first_test - 1, 4, 2] = np.inf
    path = tmp_path / "nyu_depth_v2_labeled.mat"
    with h5py.File(path, "w") as f:
        f["images"], f["depths"], f["rawDepths"] = images, depths, raw
    code, out, err = cli(capsys, "data", "check", path, "--json")
    test = json.loads(out)["splits"]["test"]
    assert code == 0, err
    assert test["read"] == 200 and test["non_finite_pixels"] == 2
    assert test["hole_fraction"] == pytest.approx((200 * 6 + 2) / (200 * 48), abs=1e-4)  # the x = 0 column too
    assert all(np.isfinite(test["depth_range_m"])) and test["depth_range_m"][1] < 10
    code, out, _ = cli(capsys, "data", "check", path)
    test_line = next(line for line in out.splitlines() if line.startswith("  test "))
    assert "holes 12.5% (2 pixels NaN or inf)" in test_line and "inf m" not in test_line


def test_densedepth_absolute_paths_are_kept_as_listed(capsys, tmp_path):
    root = write_densedepth(tmp_path / "dd")
    csv = root / "data" / "nyu2_train.csv"
    csv.write_text("".join(",".join(f"{root}/{p}" for p in line.split(",")) + "\n"
                           for line in csv.read_text().splitlines()))
    code, out, err = cli(capsys, "data", "check", root)
    assert code == 0 and "ok: every listed file is present" in out, err
    gone = tmp_path / "elsewhere" / "kitchen_0001_out" / "9.jpg"
    csv.write_text(csv.read_text() + f"{gone},{gone.with_suffix('.png')}\n")
    # the validation split is carved from train here: its files are listed in the train CSV
    assert error_line(capsys, "data", "check", root) == (
        f"error: {gone}: file not found (listed in {csv}) (and 1 more problem)")


def test_one_file_spelled_two_ways_is_a_repeat_and_an_overlap(capsys, tmp_path):
    root = write_densedepth(tmp_path / "dd")
    train, test = root / "data" / "nyu2_train.csv", root / "data" / "nyu2_test.csv"
    original = train.read_text()
    first = original.splitlines()[0]
    train.write_text(original + "./" + first.replace(",", ",./") + "\n")
    rgb = root / first.split(",")[0]
    assert error_line(capsys, "data", "check", root) == (
        f"error: {rgb}: listed more than once in the train split ({train}); remove the repeated lines")
    train.write_text(original)
    test.write_text(test.read_text() + "data//" + first.removeprefix("data/") + "\n")
    code, out, err = cli(capsys, "data", "check", root, "--json")
    assert code == 2 and json.loads(out)["overlap"]["frames"] == 1, err
    assert err.strip().startswith(f"error: 1 test frame is also listed for training (e.g. {rgb})")


def test_counts_in_messages_are_singular_for_one(capsys, tmp_path):
    root = write_densedepth(tmp_path / "dd", scenes={"kitchen_0001": 2})
    code, out, err = cli(capsys, "data", "check", root)
    assert code == 0, err
    assert (f"val    absent ({root}: no val split: a scene-disjoint validation split needs at least 2 training "
            "scenes, the train split has 1)") in out
    images, depths, raw = labeled_frames(n=1)
    path = tmp_path / "one.mat"
    with h5py.File(path, "w") as f:
        f["images"], f["depths"], f["rawDepths"] = images, depths, raw
    assert error_line(capsys, "data", "check", path) == (
        f"error: {path}: has 1 frame; the official NYU split needs 1449")
