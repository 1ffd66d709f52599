"""Bad input through the CLI: exit code 2, ONE `error:` line on stderr naming the problem,
no traceback, no partial run folder. (`data check/show` faults: tests/test_data_cli.py;
here the same faults reach `train-base`, plus config, checkpoint and run-folder faults.)

Most cases call `ensemble_mde.cli.main` in-process (the code path of `python -m
ensemble_mde`; an uncaught exception would fail the test instead of a SystemExit): a
subprocess per case would cost ~6 s of imports on a loaded 2-core machine. `run_cli`
covers the cases where the process matters: an error raised in a DataLoader worker
process, and `predict` on grayscale/RGBA files.
"""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from ensemble_mde import runs
from ensemble_mde.cli import main
from ensemble_mde.config import load_config
from ensemble_mde.io import atomic_save
from ensemble_mde.loading import build_learner

FAST = ["--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-progress", "--set", "data.workers=0",
        "--set", "train.max_steps_per_epoch=1"]


def run(capsys, *args) -> tuple[int, str]:
    """(exit code, the single stderr line) of `ensemble ARGS` run in-process."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return e.value.code, err[0]


def train_error(capsys, tmp_path, data, *extra, learner="meter_xxs") -> str:
    """The error line of a train-base run on `data` that must fail and leave no run folder."""
    out = tmp_path / "run"
    code, line = run(capsys, "train-base", learner, "--data", data, "--out", out, *FAST, *extra)
    assert code == 2 and line.startswith("error: ") and "Traceback" not in line
    assert not out.exists()                                   # no partial files
    return line


@pytest.fixture
def data(synth_root, tmp_path):
    """A private copy of the synthetic dataset to damage."""
    return shutil.copytree(synth_root, tmp_path / "data")


def train_files(root, suffix):
    return sorted((root / "data" / "nyu2_train").rglob(f"*{suffix}"))


def base_checkpoint(path, seed=0):
    """A meter_xxs checkpoint (fresh weights) as training writes it; returns its config."""
    cfg = load_config(["defaults", "base/meter_xxs"])
    torch.manual_seed(seed)
    atomic_save(runs.checkpoint_payload(build_learner(cfg), cfg), path)
    return cfg


# ---------------------------------------------------------------- data faults via train-base

def test_missing_data_path(capsys, tmp_path):
    line = train_error(capsys, tmp_path, tmp_path / "nope")
    assert line == f"error: {tmp_path / 'nope'}: no such file or folder (data.path)"


def test_unknown_dataset_format(capsys, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a dataset\n")
    line = train_error(capsys, tmp_path, tmp_path / "notes")
    assert line.startswith(f"error: {tmp_path / 'notes'}: unknown dataset format")


def test_csv_row_naming_a_missing_file(capsys, tmp_path, data):
    gone = train_files(data, ".png")[5]
    gone.unlink()
    line = train_error(capsys, tmp_path, data)
    assert line.startswith(f"error: {gone}: file not found (listed in {data / 'data' / 'nyu2_train.csv'}")


def test_empty_split(capsys, tmp_path, data):
    (data / "data" / "nyu2_train.csv").write_text("")
    line = train_error(capsys, tmp_path, data)
    assert line == f"error: the train split is empty ({data / 'data' / 'nyu2_train.csv'})"


def test_corrupt_png(capsys, tmp_path, data):
    for path in train_files(data, ".png"):
        path.write_bytes(b"not a PNG at all")
    line = train_error(capsys, tmp_path, data)
    assert line.endswith(": not a readable image (corrupt or unknown header)") and "/nyu2_train/" in line


def test_rgb_depth_size_mismatch(capsys, tmp_path, data):
    for path in train_files(data, ".png"):
        Image.fromarray(np.full((12, 16), 2000, np.uint16)).save(path)
    line = train_error(capsys, tmp_path, data)
    assert "/nyu2_train/" in line and ": depth is 12x16 but its RGB " in line and line.endswith(" is 48x64")


def test_depth_without_a_valid_pixel(capsys, tmp_path, data):
    for path in train_files(data, ".png"):
        Image.fromarray(np.zeros((48, 64), np.uint16)).save(path)
    line = train_error(capsys, tmp_path, data)
    assert line.endswith(": depth map has no valid pixel (none in (0.001, 10) m)") and "/nyu2_train/" in line


def test_bad_validation_file_found_after_training_steps_leaves_no_run_folder(capsys, tmp_path, data):
    bad = sorted((data / "data" / "nyu2_val").rglob("*.png"))[2]
    Image.fromarray(np.zeros((48, 64), np.uint16)).save(bad)
    line = train_error(capsys, tmp_path, data)
    assert line == f"error: {bad}: depth map has no valid pixel (none in (0.001, 10) m)"


def test_truncated_jpg_read_in_a_dataloader_worker(tmp_path, data):
    for path in train_files(data, ".jpg"):
        path.write_bytes(path.read_bytes()[:300])
    out = tmp_path / "run"
    proc = run_cli("train-base", "meter_xxs", "--data", data, "--out", out, *FAST, "--set", "data.workers=1")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and ".jpg: corrupt or truncated image (" in lines[0]
    assert not out.exists()


# ---------------------------------------------------------------- config faults

def test_unknown_learner(capsys, tmp_path, synth_root):
    line = train_error(capsys, tmp_path, synth_root, learner="ldrm")
    assert line == "error: unknown learner 'ldrm'; did you mean 'ldrn'?"


def test_unknown_config_key(capsys, tmp_path, synth_root):
    line = train_error(capsys, tmp_path, synth_root, "--set", "train.lrr=0.1")
    assert line == "error: --set train.lrr=0.1: unknown key 'train.lrr'; closest valid key: 'train.lr'"


def test_wrong_value_type(capsys, tmp_path, synth_root):
    line = train_error(capsys, tmp_path, synth_root, "--set", "train.val_batch_size=two")
    assert line == "error: --set train.val_batch_size=two: key 'train.val_batch_size' expects int, got str 'two'"


def test_worker_count_that_is_neither_auto_nor_a_count(capsys, tmp_path, synth_root):
    line = train_error(capsys, tmp_path, synth_root, "--set", "data.workers=-1")
    assert line == "error: --set data.workers=-1: data.workers must be an int >= 0 or auto, got -1"


def test_missing_pretrained_weights(capsys, tmp_path, synth_root):
    line = train_error(capsys, tmp_path, synth_root, "--set", f"model.pretrained={tmp_path / 'w.pth'}",
                       learner="ldrn")
    assert line == f"error: {tmp_path / 'w.pth'}: pretrained weights file not found (model.pretrained)"


def test_run_folder_that_cannot_be_created(capsys, tmp_path, synth_root):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, line = run(capsys, "train-base", "meter_xxs", "--data", synth_root, "--out", blocker / "run", *FAST)
    assert code == 2
    assert line == (f"error: cannot create run folder {blocker / 'run'}: {blocker} is a file; choose another --out "
                    "or run.runs_dir")


def test_batch_larger_than_the_train_split(capsys, tmp_path, synth_root):
    line = train_error(capsys, tmp_path, synth_root, "--batch-size", "64")
    assert line == "error: train.batch_size: train split has 16 samples, fewer than one batch of 64"


def test_global_batch_that_does_not_split_over_the_processes(capsys, tmp_path, synth_root, monkeypatch):
    from ensemble_mde import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 3)                # as under torchrun with 3 ranks
    line = train_error(capsys, tmp_path, synth_root)
    assert line == "error: train.batch_size 4 is the global batch; it must split evenly over 3 processes"


# ---------------------------------------------------------------- checkpoint faults

def test_resume_into_a_run_of_another_learner(capsys, tmp_path, synth_root):
    run_dir = tmp_path / "run"
    base_checkpoint(run_dir / "last.pt")                                      # a meter_xxs run
    code, line = run(capsys, "train-base", "ldrn", "--data", synth_root, "--out", run_dir, *FAST, "--resume")
    assert code == 2 and line == (
        f"error: {run_dir / 'last.pt'}: holds a base run of 'meter_xxs'; cannot resume a base run of 'ldrn' "
        "from it (resume with that run's own command, or choose another --out)")
    assert sorted(p.name for p in run_dir.iterdir()) == ["last.pt"]          # left as it was


class CodeOnLoad:
    """A pickle payload: unpickling it would call print."""

    def __reduce__(self):
        return (print, ("this ran",))


def _truncated(ckpt):
    ckpt.write_bytes(ckpt.read_bytes()[:4000])
    return "the file is truncated or damaged (an interrupted copy or write?); copy it again or use another"


def _empty(ckpt):
    ckpt.write_bytes(b"")
    return "the file is empty"


def _text(ckpt):
    ckpt.write_text("these are my notes, not weights\n")
    return "not a PyTorch checkpoint"


def _code(ckpt):
    torch.save({"payload": CodeOnLoad()}, ckpt)
    return ("it holds Python objects besides tensors and plain data, which could run code when loaded; only "
            "weights are loaded (torch.load weights_only=True)")


@pytest.mark.parametrize("damage", [_truncated, _empty, _text, _code])
def test_a_checkpoint_that_cannot_load_is_said_in_our_words(capsys, tmp_path, synth_root, damage):
    ckpt = tmp_path / "best.pt"
    base_checkpoint(ckpt)
    problem = damage(ckpt)
    code, line = run(capsys, "evaluate", ckpt, "--data", synth_root, "--device", "cpu")
    assert code == 2 and line == f"error: {ckpt}: cannot load checkpoint: {problem}"


def test_meta_run_whose_base_checkpoint_changed(capsys, tmp_path, synth_root):
    from ensemble_mde.loading import build_ensemble
    from ensemble_mde.training.meta import meta_config, resolve_bases

    bases = [tmp_path / name / "best.pt" for name in ("a", "b")]
    for seed, path in enumerate(bases):
        base_checkpoint(path, seed)
    cfg = meta_config(mode="freeze", bases=[str(p.parent) for p in bases], overrides=[f"data.path={synth_root}"])
    runs.with_record(cfg, {"bases": resolve_bases(cfg)})
    atomic_save(runs.checkpoint_payload(build_ensemble(cfg, init_weights=False), cfg, kind="meta"),
                tmp_path / "meta" / "best.pt")
    base_checkpoint(bases[1], seed=7)                                         # retrained since
    code, line = run(capsys, "evaluate", tmp_path / "meta", "--data", synth_root, "--device", "cpu")
    assert code == 2 and line.startswith(f"error: {bases[1]}: base 'meter_xxs:b' checkpoint changed since the "
                                         "meta-learner was trained (sha256 ")


# ---------------------------------------------------------------- not refused: converted

def test_predict_converts_grayscale_and_rgba_images(tmp_path):
    ckpt = tmp_path / "best.pt"
    base_checkpoint(ckpt)
    rng = np.random.default_rng(0)
    gray, rgba = tmp_path / "gray.png", tmp_path / "rgba.png"
    Image.fromarray(rng.integers(0, 256, (40, 56), dtype=np.uint8), mode="L").save(gray)
    Image.fromarray(rng.integers(0, 256, (40, 56, 4), dtype=np.uint8), mode="RGBA").save(rgba)
    out = tmp_path / "pred"
    proc = run_cli("predict", ckpt, gray, rgba, "--out", out, "--device", "cpu", check=True)
    assert proc.stderr == ""
    for stem in ("gray", "rgba"):
        depth = np.asarray(Image.open(out / f"{stem}_depth.png"))
        assert depth.shape == (40, 56) and depth.dtype == np.uint16 and depth.max() > 0   # mm at the input size
