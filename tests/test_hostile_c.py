"""Hostile dataset lists and depth values through `ensemble data check` (issue 24, items 13, 15
and 16): a broken list is a problem, never a silently absent split; a few NaN/inf depths are
counted; a listed file has one key however it is spelled (absolute, `./`), so repeats and
train/test overlap are caught; counts read '1 problem', not '1 problem(s)'."""

import h5py

from test_data_readers import labeled_frames, write_densedepth
from test_hostile_input import cli, error_line


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
