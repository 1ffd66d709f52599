"""Hostile input and faults (issue 24, part B1): checkpoints that cannot be loaded, run folders
that must not be overwritten or shared, and results made from data or bases that changed. Each
case is one `error:` line and exit code 2 with nothing lost, or the right result instead of a
silent wrong one."""

import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch
import yaml

from ensemble_mde import runs
from ensemble_mde.io import atomic_save
from test_bad_input import base_checkpoint
from test_experiment import TWO_STEPS
from test_hostile_input import cli, error_line, hold_lock, write_run

DAMAGED = "the file is truncated or damaged (an interrupted copy or write?); copy it again or use another"


# ------------------------------------------------------------------ 8: checkpoint errors in our own words

def _largest_member(ckpt):
    """(offset of the first data byte, size) of the largest member of a zip checkpoint."""
    with zipfile.ZipFile(ckpt) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    with open(ckpt, "rb") as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_length + extra_length, info.file_size


def _bit_flipped(ckpt):
    data = bytearray(ckpt.read_bytes())
    start, size = _largest_member(ckpt)
    data[start + size // 2] ^= 0x10  # one weight changes; the zip stays whole
    ckpt.write_bytes(bytes(data))
    return DAMAGED


def _random_bytes(ckpt):
    ckpt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return "not a PyTorch checkpoint"


def _numpy_array(ckpt):
    with open(ckpt, "wb") as f:
        np.save(f, np.zeros((3, 4), dtype=np.float32))
    return "not a PyTorch checkpoint"


def _plain_pickle(ckpt):
    ckpt.write_bytes(pickle.dumps({"weights": [0.1, 0.2]}))
    return "not a PyTorch checkpoint"


def _other_zip(ckpt):
    with zipfile.ZipFile(ckpt, "w") as archive:
        archive.writestr("notes/readme.txt", "not weights")
    return "not a PyTorch checkpoint (a zip archive of other files)"


def _newer_torch(ckpt):
    with zipfile.ZipFile(ckpt) as old:
        members = [(info, old.read(info)) for info in old.infolist()]
    with zipfile.ZipFile(ckpt, "w") as new:
        for info, data in members:
            new.writestr(info, b"99\n" if info.filename.endswith("/version") else data)
    return f"saved by a newer PyTorch (file format version 99; torch {torch.__version__} reads up to "


@pytest.mark.parametrize("damage", [_bit_flipped, _random_bytes, _numpy_array, _plain_pickle, _other_zip,
                                    _newer_torch])
def test_a_checkpoint_that_cannot_load_says_what_it_is(capsys, tmp_path, synth_root, damage):
    ckpt = tmp_path / "best.pt"
    base_checkpoint(ckpt)
    problem = damage(ckpt)
    line = error_line(capsys, "evaluate", ckpt, "--data", synth_root, "--device", "cpu")
    assert line.startswith(f"error: {ckpt}: cannot load checkpoint: {problem}")
    if damage is _newer_torch:
        assert line.endswith("); upgrade PyTorch to load it")
    else:
        assert line == f"error: {ckpt}: cannot load checkpoint: {problem}"


def test_a_checkpoint_of_another_ensemble_mde_version_says_so(capsys, tmp_path, synth_root):
    ckpt = tmp_path / "best.pt"
    base_checkpoint(ckpt)
    atomic_save({**torch.load(ckpt, weights_only=True), "format": "ensemble-mde/2"}, ckpt)
    assert error_line(capsys, "evaluate", ckpt, "--data", synth_root, "--device", "cpu") == (
        f"error: {ckpt}: saved by another version of ensemble-mde (format ensemble-mde/2; this version reads "
        "ensemble-mde/1); load it with the version that wrote it")


def test_a_checkpoint_saved_without_checksums_still_loads(tmp_path):
    ckpt = tmp_path / "best.pt"
    previous = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        base_checkpoint(ckpt)
    finally:
        torch.serialization.set_crc32_options(previous)
    assert runs.read_checkpoint(ckpt)["learner"] == "meter_xxs"


# ------------------------------------------------------------------ 9: a run is never overwritten unasked

FAST = ["--device", "cpu", "--no-progress", "--set", "data.workers=0", "--set", "train.batch_size=4",
        "--set", "train.max_steps_per_epoch=1", "--epochs", "1"]


def test_resume_of_a_run_without_last_pt_is_refused_instead_of_training_it_again(capsys, tmp_path, synth_root):
    """A finished run whose last.pt was deleted (to save space) has nothing to resume: --resume
    must not start afresh and replace its best.pt."""
    run = write_run(tmp_path / "run", synth_root)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    line = error_line(capsys, "train-base", "meter_xxs", "--data", synth_root, "--out", run, "--resume", *FAST)
    assert line == (f"error: {run}: run folder holds a run (best.pt, summary.json) but no last.pt to resume it "
                    "from; pass --force to overwrite it")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_import_weights_refuses_a_run_folder_and_force_replaces_all_of_it(capsys, tmp_path, synth_root):
    from base_learners.meter import METER

    official = tmp_path / "build_model_best_nyu_xxs"
    torch.save(METER("xxs").state_dict(), official)
    run = write_run(tmp_path / "run", synth_root)
    (run / "last.pt").write_bytes((run / "best.pt").read_bytes())
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    line = error_line(capsys, "import-weights", "meter_xxs", official, "--out", run)
    assert line == (f"error: {run}: run folder already holds a run (best.pt, last.pt, summary.json); pass --force "
                    "to overwrite it")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    code, _, err = cli(capsys, "import-weights", "meter_xxs", official, "--out", run, "--force")
    assert code == 0, err
    # nothing of the trained run is left beside the imported weights (compare would read its summary)
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.yaml", "record.json"]
    assert runs.read_checkpoint(run / "best.pt")["source"] == str(official)


# ------------------------------------------------------------------ 10: an experiment folder is not shared

def one_base_experiment(out, seed=0) -> dict:
    return {"name": "one", "out": str(out), "device": "cpu",
            "data": {"synth": {"train": 8, "val": 4, "test": 4, "size": [48, 64], "seed": seed}},
            "bases": [{"name": "meter_xxs", "preset": "cpu", "overrides": TWO_STEPS}],
            "compare": {"baselines": ["mean"], "bootstrap": 0, "measure": False, "figure_images": 0}}


def test_a_second_run_of_an_experiment_folder_is_refused_and_names_the_first(capsys, tmp_path):
    """The second process would render the data again under the first one's training."""
    out = tmp_path / "out"
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(one_base_experiment(out)))
    holder = hold_lock(out / runs.LOCK_FILE)
    try:
        line = error_line(capsys, "experiment", path, "--no-progress")
    finally:
        holder.kill()
        holder.wait()
    assert line == (f"error: experiment folder {out} is in use by process {holder.pid}; wait for that experiment "
                    "to finish, or choose another --out")
    assert sorted(p.name for p in out.iterdir()) == [runs.LOCK_FILE]   # the holder's; nothing rendered or trained


# ------------------------------------------------------------------ 11: results from inputs that changed

def test_a_damaged_synthetic_marker_renders_the_data_again(tmp_path):
    from ensemble_mde.experiment import load_experiment, plan

    exp = load_experiment(one_base_experiment(tmp_path / "out"))
    marker = tmp_path / "out" / "data" / "synthetic.json"
    marker.parent.mkdir(parents=True)
    marker.write_bytes(b'{"seed": 0, "size": [4')   # a render killed while writing it
    assert plan(exp, say=lambda *a: None)[0].status == "new"


def test_the_freeze_cache_of_data_rendered_again_in_place_is_not_reused(tmp_path):
    """Same bases, same folder, same frame names, new images: the cached base depths must be
    those of the new images, as a cache filled from scratch holds them."""
    from ensemble_mde.data import build_dataset
    from ensemble_mde.data.synth import synthesize
    from ensemble_mde.loading import build_ensemble, load_base_weights
    from ensemble_mde.training.meta import cached_split, meta_config, prepare_record

    data = tmp_path / "data"
    counts = {"train": 4, "val": 2, "test": 2}
    synthesize(data, counts=counts, size=(48, 64), seed=0, progress=False, workers=1)
    bases = [write_run(tmp_path / name, data, seed=seed) for seed, name in enumerate(("a", "b"))]

    def cached(cache_dir):
        cfg = meta_config(mode="freeze", bases=[str(b) for b in bases],
                          overrides=["data.workers=0", "meta.pretrained=false", f"ensemble.cache_dir={cache_dir}"])
        prepare_record(runs.with_record(cfg))
        ensemble = build_ensemble(cfg)
        load_base_weights(ensemble, cfg[runs.RECORD]["bases"])
        plain = build_dataset(runs.data_view(cfg), "val")
        split = cached_split(cfg, ensemble, plain, torch.device("cpu"), progress=False)
        return torch.stack([split[i]["base_depths"] for i in range(len(split))])

    first = cached(tmp_path / "cache")
    synthesize(data, counts=counts, size=(48, 64), seed=1, progress=False, workers=1)
    again, fresh = cached(tmp_path / "cache"), cached(tmp_path / "fresh")
    assert torch.equal(again, fresh) and not torch.equal(again, first)
