"""Hostile input and faults through the CLI (issue 24): every case is one `error:` line and exit
code 2 with nothing half-made, or, where the input is fine, the right result instead of a silent
wrong one. In-process (`ensemble_mde.cli.main`) where the process does not matter; `run_cli`
where it does (a hang, a second process holding a lock)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import run_cli
from ensemble_mde import runs
from ensemble_mde.cli import main
from ensemble_mde.config import load_config
from ensemble_mde.io import atomic_save, atomic_write_json
from ensemble_mde.loading import build_learner, load_run
from test_data_readers import labeled_frames, write_bts

FAST = ["--device", "cpu", "--no-progress", "--set", "data.workers=0", "--set", "train.batch_size=4",
        "--set", "train.max_steps_per_epoch=1"]


def cli(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `ensemble ARGS` run in this process."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def error_line(capsys, *args) -> str:
    """The one stderr line of a command that must fail with exit code 2."""
    code, _, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def refused(capsys, tmp_path, data, *extra, learner="meter_xxs") -> str:
    """The error line of a train-base run that must fail before leaving any run folder."""
    out = tmp_path / "run"
    line = error_line(capsys, "train-base", learner, "--data", data, "--out", out, *FAST, *extra)
    assert not out.exists()
    return line


def write_run(folder: Path, data: Path, *, seed: int = 0, val_rmse: float = 1.0, **cfg_changes) -> Path:
    """A finished meter_xxs run folder (fresh weights, 48x64 input) as training leaves it."""
    cfg = load_config(["defaults", "base/meter_xxs"], overrides=[f"data.path={data}", "data.size=[48, 64]",
                                                                 f"run.seed={seed}", f"run.name={folder.name}"])
    for key, value in cfg_changes.items():
        cfg["data"][key] = value
    torch.manual_seed(seed)
    atomic_save(runs.checkpoint_payload(build_learner(cfg), cfg, epoch=1, step=1, metrics={}), folder / "best.pt")
    runs.RunFolder(folder).write_config(cfg)
    atomic_write_json({"epochs": 1, "best_epoch": 1, "train_seconds": 1.0}, folder / "summary.json")
    (folder / "metrics.jsonl").write_text(json.dumps({"type": "val", "epoch": 1, "step": 1, "rmse": val_rmse,
                                                      "best": True}) + "\n")
    return folder


# ------------------------------------------------------------------ 1-6, 14: refused before any work

def test_lr_find_on_a_split_smaller_than_one_batch_stops_instead_of_hanging(tmp_path, synth_root):
    proc = run_cli("lr-find", "meter_xxs", "--data", synth_root, "--batch-size", "32", "--steps", "5",
                   "--device", "cpu", "--no-progress", "--set", "data.workers=0", "--plot", tmp_path / "lr.png",
                   timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: train.batch_size: train split has 16 samples, fewer than one batch of 32"]
    assert not (tmp_path / "lr.png").exists()


def test_a_binary_file_as_config_or_experiment(capsys, tmp_path, synth_root):
    binary = tmp_path / "photo.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    line = refused(capsys, tmp_path, synth_root, "--config", binary)
    assert line == f"error: {binary}: not a text file (a YAML config must be UTF-8 text)"
    assert error_line(capsys, "experiment", binary) == line


@pytest.mark.parametrize("override, message", [
    ("train.epochs=null", "train.epochs must be an int >= 1, got None"),
    ("train.epochs=0", "train.epochs must be an int >= 1, got 0"),
    ("train.batch_size=0", "train.batch_size must be an int >= 1, got 0"),
    ("train.lr=-1", "train.lr must be a number > 0, got -1.0"),
    ("train.lr=nan", "train.lr must be a number > 0, got nan"),
    ("train.best_metric=banana", "train.best_metric must be one of d1, d2, d3, abs_rel, sq_rel, rmse, rmse_log, "
                                 "log10, silog, got 'banana'"),
    ("train.amp=fp16", "train.amp must be one of none, bf16, got 'fp16'"),
    ("augment.flip=2", "augment.flip must be a number in [0, 1], got 2.0"),
    ("train.grad_clip=-1", "train.grad_clip must be a number >= 0, got -1.0"),
    ("augment.enabled=null", "augment.enabled must be true or false, got None"),
])
def test_values_outside_what_a_key_accepts_are_refused_up_front(capsys, tmp_path, synth_root, override, message):
    line = refused(capsys, tmp_path, synth_root, "--set", override)
    assert line == f"error: --set {override}: {message}"


def test_a_yaml_alias_loop_or_a_list_where_a_path_belongs(capsys, tmp_path, synth_root):
    loop = tmp_path / "loop.yaml"
    loop.write_text("run: {name: &a [*a]}\n")
    assert refused(capsys, tmp_path, synth_root, "--config", loop) == (
        f"error: {loop}: run.name contains itself through a YAML alias (&anchor ... *anchor); write the value out")
    assert refused(capsys, tmp_path, synth_root, "--set", "model.pretrained=[a, b]", learner="ldrn") == (
        "error: --set model.pretrained=[a, b]: model.pretrained must be true (timm's ImageNet weights), false "
        "(random init) or a weights file path, got ['a', 'b']")


def test_a_yaml_file_whose_aliases_expand_to_a_billion_strings_gets_a_short_line(capsys, tmp_path, synth_root):
    laughs = tmp_path / "laughs.yaml"         # 9 levels of 9 aliases: 9**9 strings once expanded
    levels = ['    - &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    levels += [f"    - &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    laughs.write_text("selectivity:\n  layers:\n" + "\n".join(levels) + "\n")
    line = refused(capsys, tmp_path, synth_root, "--config", laughs)
    assert line.startswith(f"error: {laughs}: selectivity.layers must be a list of strings, got [['x', 'x', ")
    assert len(line) - len(str(laughs)) < 400     # not the billions of strings


def test_a_flag_and_a_set_of_the_same_key_are_refused(capsys, tmp_path, synth_root):
    assert refused(capsys, tmp_path, synth_root, "--epochs", "2", "--set", "train.epochs=5") == (
        "error: --epochs and --set train.epochs=5 both set train.epochs; give one of them")


def test_the_rules_name_the_metrics_modes_and_inputs_of_the_code():
    from ensemble_mde.config import packaged_rules
    from ensemble_mde.metrics import METRIC_KEYS
    from meta_learner.ensemble import MODES
    from meta_learner.weighting import HEADS, INPUT_KINDS

    rules = packaged_rules()
    assert tuple(rules["train"]["best_metric"]["choices"]) == METRIC_KEYS
    assert tuple(rules["ensemble"]["mode"]["choices"]) == MODES
    assert (tuple(rules["meta"]["inputs"]["choices"]), tuple(rules["meta"]["head"]["choices"])) == (INPUT_KINDS, HEADS)
    for name in ("base/adabins", "base/bts", "base/ldrn", "base/meter_xs", "meta/weighting"):
        load_config(["defaults", name])                        # every packaged default keeps its own rules


# ------------------------------------------------------------------ 7: damaged run files

@pytest.fixture
def two_runs(tmp_path, synth_root):
    return [write_run(tmp_path / "runs" / f"meter_{i}", synth_root, seed=i, val_rmse=1.0 + i) for i in range(2)]


def compare_json(capsys, *runs_and_options):
    code, out, err = cli(capsys, "compare", *runs_and_options, "--no-compute", "--no-progress", "--format", "json",
                         "--device", "cpu")
    assert code == 0, err
    return json.loads(out), err


@pytest.mark.parametrize("text", [b"", b'{"epochs": 1, "best_'])
def test_compare_over_a_damaged_summary_is_one_line(capsys, two_runs, text):
    (two_runs[1] / "summary.json").write_bytes(text)
    line = error_line(capsys, "compare", *two_runs, "--no-compute", "--no-progress")
    assert line == (f"error: {two_runs[1] / 'summary.json'}: not valid JSON (empty, truncated or damaged); delete it "
                    "and rerun the command that wrote it (training: the same command with --resume)")


def test_compare_skips_a_half_written_or_junk_log_line_with_a_warning(capsys, two_runs):
    log = two_runs[1] / "metrics.jsonl"
    log.write_bytes(log.read_bytes() + b'{"type": "train", "ste' + b"\n\xff\xfe junk\n")
    result, err = compare_json(capsys, *two_runs, "--baselines", "weighted")
    assert err.strip().splitlines() == [f"warning: {log}: skipped line(s) 2, 3, not a valid log record (a half-written "
                                        "line is what a crash leaves)"]
    assert "Weighted (1/val RMSE)" in [r["name"] for r in result["accuracy"]["rows"]]   # the good line still counts


# ------------------------------------------------------------------ 9, 10: run folders are not shared

def test_a_finished_run_is_not_overwritten_without_force(capsys, tmp_path, synth_root):
    run = write_run(tmp_path / "run", synth_root)
    before = (run / "best.pt").read_bytes()
    line = error_line(capsys, "train-base", "meter_xxs", "--data", synth_root, "--out", run, "--epochs", "1", *FAST)
    assert line == (f"error: {run}: run folder already holds a run (best.pt, summary.json); pass --resume to "
                    "continue it or --force to overwrite it")
    assert (run / "best.pt").read_bytes() == before and not (run / ".lock").exists()
    code, _, err = cli(capsys, "train-base", "meter_xxs", "--data", synth_root, "--out", run, "--epochs", "1", *FAST,
                       "--force")
    assert code == 0, err
    assert (run / "best.pt").read_bytes() != before
    assert json.loads((run / "summary.json").read_text())["steps"] == 1


HOLD = """
import sys, time
from pathlib import Path
from ensemble_mde.io import exclusive_lock
from ensemble_mde.loading import build_learner, load_run
with exclusive_lock(Path(sys.argv[1]), "held", "wait"):
    print("held", flush=True)
    time.sleep(120)
"""


def hold_lock(path: Path) -> subprocess.Popen:
    """Another process that holds the lock file `path` until it is killed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_process_training_into_a_run_folder_is_refused_and_names_the_first(capsys, tmp_path, synth_root):
    run = tmp_path / "run"
    holder = hold_lock(run / runs.LOCK_FILE)
    try:
        line = error_line(capsys, "train-base", "meter_xxs", "--data", synth_root, "--out", run, "--epochs", "1",
                          *FAST)
    finally:
        holder.kill()
        holder.wait()
    assert line == (f"error: run folder {run} is in use by process {holder.pid}; wait for that run to finish, or "
                    "choose another --out")
    assert not (run / "config.yaml").exists()
    # the OS let go of the killed holder's lock: the run goes ahead
    code, _, err = cli(capsys, "train-base", "meter_xxs", "--data", synth_root, "--out", run, "--epochs", "1", *FAST)
    assert code == 0, err
    assert not (run / runs.LOCK_FILE).exists()


def test_a_prediction_cache_being_filled_is_not_filled_twice(tmp_path):
    from ensemble_mde.errors import EnsembleError
    from meta_learner.cache import PredictionCache
    from test_cache import FrameDataset, TinyLearner

    cache = PredictionCache.open(tmp_path / "cache", ["h0"], "data")
    holder = hold_lock(cache.lock_path)
    try:
        with pytest.raises(EnsembleError) as e:
            cache.fill(FrameDataset(), [TinyLearner(0)], progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert str(e.value) == (f"prediction cache {cache.path} is in use by process {holder.pid}; wait until it is "
                            "filled, then run this again")
    assert cache.fill(FrameDataset(), [TinyLearner(0)], progress=False).complete


# ------------------------------------------------------------------ 12, 21, 22: predict

@pytest.fixture
def meter_checkpoint(tmp_path):
    cfg = load_config(["defaults", "base/meter_xxs"], overrides=["data.size=[32, 32]"])
    torch.manual_seed(0)
    model = build_learner(cfg)
    with torch.no_grad():  # an output layer that says "far below the floor" everywhere
        model.decoder.conv2d_out.weight.copy_(-model.decoder.conv2d_out.weight.abs() * 50)
    path = tmp_path / "neg" / "best.pt"
    atomic_save(runs.checkpoint_payload(model, cfg), path)
    return path


def test_predict_outputs_never_collide(capsys, tmp_path, meter_checkpoint):
    rng = np.random.default_rng(0)
    images = [tmp_path / "kitchen.png", tmp_path / "kitchen.jpg"]
    for i, path in enumerate(images):
        Image.fromarray(rng.integers(0, 256, (24 + 8 * i, 32, 3), dtype=np.uint8)).save(path)
    out = tmp_path / "pred"
    code, stdout, err = cli(capsys, "predict", meter_checkpoint, *images, "--out", out, "--device", "cpu")
    assert code == 0, err
    shapes = {name: np.asarray(Image.open(out / name)).shape for name in ("kitchen_png_depth.png",
                                                                          "kitchen_jpg_depth.png")}
    assert shapes == {"kitchen_png_depth.png": (24, 32), "kitchen_jpg_depth.png": (32, 32)}
    assert str(out / "kitchen_png_depth.png") in stdout and str(out / "kitchen_jpg_depth.png") in stdout


def test_a_learner_never_outputs_depth_outside_its_range(capsys, tmp_path, meter_checkpoint):
    model, _, _ = load_run(meter_checkpoint)
    model.train()
    depth = model(torch.rand(2, 3, 32, 32))["depth"]
    assert float(depth.detach().min()) == pytest.approx(model.min_depth) and float(depth.detach().max()) <= 10
    depth.sum().backward()               # the clipped pixels still learn: the gradient passes through
    assert float(model.decoder.conv2d_out.weight.grad.abs().sum()) > 0
    image = tmp_path / "room.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    code, stdout, err = cli(capsys, "predict", meter_checkpoint, image, "--out", tmp_path / "p", "--device", "cpu")
    assert code == 0, err
    assert stdout.startswith(f"{image}: depth 0.00-0.00 m (median 0.00)")           # not "-0.00--0.00"
    assert np.asarray(Image.open(tmp_path / "p" / "room_depth.png")).min() == 1      # 1 mm, never 0 = "no depth"


def test_predict_turns_a_phone_photo_upright(capsys, tmp_path, meter_checkpoint):
    photo = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored pixels are rotated 90 degrees
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(photo, exif=exif)
    code, _, err = cli(capsys, "predict", meter_checkpoint, photo, "--out", tmp_path / "p", "--device", "cpu")
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "p" / "phone_depth.png")).shape == (56, 40)


# ------------------------------------------------------------------ 13, 15, 16: datasets

def _zero_bytes(csv):
    csv.write_bytes(b"")
    return "the train split is empty"


def _binary(csv):
    csv.write_bytes(bytes(range(128, 256)))
    return "not a UTF-8 text file"


def _malformed(csv):
    csv.write_text(csv.read_text() + "just one cell\n")
    return "expected 'rgb_path,depth_path', got 'just one cell'"


def _three_columns(csv):
    csv.write_text("".join(line + ",extra\n" for line in csv.read_text().splitlines()))
    return "expected 'rgb_path,depth_path'"


@pytest.mark.parametrize("damage", [_zero_bytes, _binary, _malformed, _three_columns])
def test_data_check_of_a_bad_list_is_a_problem_not_ok(capsys, tmp_path, synth_root, damage):
    data = shutil.copytree(synth_root, tmp_path / "data")
    csv = data / "data" / "nyu2_train.csv"
    problem = damage(csv)
    code, out, err = cli(capsys, "data", "check", data)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and problem in lines[0] and str(data) in lines[0]
    assert "ok: every listed file" not in out


def test_data_check_counts_nan_and_inf_depth_as_holes(capsys, tmp_path):
    images, depths, raw = labeled_frames()
    raw[:, 1, :] = np.nan
    raw[:, 2, :] = np.inf
    path = tmp_path / "nyu_depth_v2_labeled.mat"
    with h5py.File(path, "w") as f:
        f["images"], f["depths"], f["rawDepths"] = images, depths, raw
    code, out, _ = cli(capsys, "data", "check", path, "--json")
    test = json.loads(out)["splits"]["test"]
    assert code == 0 and test["hole_fraction"] == pytest.approx(3 / 8) and test["non_finite_fraction"] == 0.25
    assert all(np.isfinite(test["depth_range_m"])) and test["depth_range_m"][1] < 10
    code, out, _ = cli(capsys, "data", "check", path)
    assert "holes 37.5% (25.0% NaN or inf)" in out and "inf m" not in out


def bts_lists(folder: Path, train, test):
    return write_bts(folder, {"a_train_files.txt": train, "a_test_files.txt": test})


def test_a_list_with_a_byte_order_mark_and_absolute_paths(capsys, tmp_path):
    folder = bts_lists(tmp_path / "bts", [("kitchen_0001", 1), ("bath_0002", 2), ("study_0003", 3)],
                       [("kitchen", 9)])
    train = folder / "a_train_files.txt"
    lines = train.read_text().splitlines()
    absolute = [f"{folder}{line.split()[0]} {folder}{line.split()[1]} 518.8579" for line in lines]
    train.write_text("\ufeff" + "\n".join(absolute[:2] + lines[2:]) + "\n")   # BOM, absolute then relative paths
    code, out, err = cli(capsys, "data", "check", folder)
    assert code == 0, err
    assert "train  2 frames, 2 scenes" in out and "val    1 frame, 1 scene" in out
    missing = f"{folder}/gone/rgb_00007.jpg"
    train.write_text(f"{missing} {folder}/gone/sync_depth_00007.png 518.8579\n" + "\n".join(lines) + "\n")
    line = error_line(capsys, "data", "check", folder)
    assert line.startswith(f"error: {missing} (looked for as listed and as {folder}{missing}): file not found")


def test_a_frame_listed_twice_is_a_problem_and_is_not_trained_on(capsys, tmp_path):
    folder = bts_lists(tmp_path / "bts", [("kitchen_0001", 1), ("bath_0002", 2), ("study_0003", 3)],
                       [("kitchen", 9)])
    train = folder / "a_train_files.txt"
    train.write_text(train.read_text() + train.read_text().splitlines()[0] + "\n")
    rgb = folder / "kitchen_0001" / "rgb_00001.jpg"
    expected = f"error: {rgb}: listed more than once in the train split ({train}); remove the repeated lines"
    assert error_line(capsys, "data", "check", folder) == expected
    assert refused(capsys, tmp_path, folder, "--epochs", "1") == expected


def test_frames_in_both_train_and_test_are_reported_and_refused_for_training(capsys, tmp_path):
    folder = bts_lists(tmp_path / "bts", [("kitchen_0001", 1), ("bath_0002", 2), ("study_0003", 3), ("bath_0002", 4)],
                       [("bath_0002", 2), ("kitchen", 9)])
    code, out, err = cli(capsys, "data", "check", folder, "--json")
    assert code == 2 and json.loads(out)["overlap"] == {"frames": 1, "scenes": 1}
    frame = folder / "bath_0002" / "rgb_00002.jpg"
    problem = (f"1 test frame is also listed for training (e.g. {frame}); 1 scene is in both train and test "
               "(e.g. bath_0002)")
    assert err.strip() == f"error: {problem}: training refuses such a dataset unless data.allow_test_overlap=true"
    assert refused(capsys, tmp_path, folder, "--epochs", "1") == (
        f"error: {problem}: the test score would not measure generalisation; fix the lists, or set "
        "data.allow_test_overlap=true to train anyway")
    code, _, err = cli(capsys, "train-base", "meter_xxs", "--data", folder, "--out", tmp_path / "run", "--epochs", "1",
                       *FAST, "--set", "train.batch_size=1", "--set", "data.allow_test_overlap=true")
    assert code == 0, err


# ------------------------------------------------------------------ 19, 20 and the files a run writes

@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_root):
    """meter_xxs trained one step on 32x48 frames resized from the 48x64 data, under umask 022."""
    run = tmp_path_factory.mktemp("trained") / "meter"
    previous = os.umask(0o022)
    try:
        with pytest.raises(SystemExit) as e:
            main(["train-base", "meter_xxs", "--data", str(synth_root), "--out", str(run), "--epochs", "1",
                  "--size", "32x48", *FAST])
    finally:
        os.umask(previous)
    assert e.value.code == 0
    return run


def test_validation_during_training_scores_as_evaluate_does(capsys, trained):
    summary = json.loads((trained / "summary.json").read_text())
    code, out, err = cli(capsys, "evaluate", trained, "--split", "val", "--json", "--device", "cpu")
    assert code == 0, err
    evaluated = json.loads(out)
    for key in ("abs_rel", "rmse", "d1", "silog"):
        assert evaluated[key] == pytest.approx(summary["last_val"][key], rel=1e-5, abs=1e-6), key


def test_profile_of_a_run_uses_its_own_input_size(capsys, trained):
    code, out, err = cli(capsys, "profile", trained, "--json", "--repeats", "1", "--device", "cpu")
    assert code == 0, err
    result = json.loads(out)
    assert result["input_size"] == [32, 48]
    from ensemble_mde.profiling import count_gmacs

    assert result["gmacs"] == pytest.approx(count_gmacs(load_run(trained)[0], (32, 48)))


def test_a_run_folder_is_written_under_the_umask_counting_epochs_from_1(trained):
    for name in ("best.pt", "last.pt", "config.yaml", "record.json", "summary.json", "metrics.jsonl"):
        assert (trained / name).stat().st_mode & 0o777 == 0o644, name
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["best_epoch"] == 1 and summary["epochs"] == 1
    log = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert {r["epoch"] for r in log} == {1}


# ------------------------------------------------------------------ compare: smaller things

def test_compare_csv_is_one_table(capsys, two_runs):
    code, out, err = cli(capsys, "compare", *two_runs, "--no-compute", "--no-progress", "--format", "csv",
                         "--baselines", "mean", "--device", "cpu")
    assert code == 0, err
    rows = list(__import__("csv").reader(out.splitlines()))
    assert rows[0][:2] == ["variant", "kind"] and len({len(r) for r in rows}) == 1       # one header, one width
    assert [r[0] for r in rows[1:]] == ["meter_xxs", "Baseline (mean)"]                  # two seeds: one row
    assert "--table compute" in err
    code, out, _ = cli(capsys, "compare", *two_runs, "--no-compute", "--no-progress", "--format", "csv",
                       "--baselines", "mean", "--table", "compute", "--device", "cpu")
    assert out.splitlines()[0].startswith("variant,kind,upper_bound,n_seeds,input,params")


def test_latex_tables_are_ascii_and_compile(capsys, two_runs, tmp_path):
    code, out, err = cli(capsys, "compare", *two_runs, "--no-compute", "--no-progress", "--format", "latex",
                         "--bootstrap", "50", "--device", "cpu")
    assert code == 0, err
    assert out.isascii(), sorted({ch for ch in out if not ch.isascii()})
    assert r"$\le$" in out and r"\dagger" in out
    if shutil.which("pdflatex"):  # installed here from Debian's texlive-latex-base/-recommended
        tex = tmp_path / "tables.tex"
        tex.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[margin=1cm,landscape]"
                       "{geometry}\n\\begin{document}\n" + out + "\\end{document}\n")
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex.name], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-2000:]


def test_baselines_over_the_same_bases_in_another_order_are_not_seeds(capsys, tmp_path, two_runs, synth_root):
    from ensemble_mde.loading import build_ensemble
    from ensemble_mde.training.meta import meta_config, resolve_bases

    metas = []
    for name, order in (("meta_ab", two_runs), ("meta_ba", two_runs[::-1])):
        cfg = meta_config(mode="freeze", bases=[str(r) for r in order],
                          overrides=[f"data.path={synth_root}", f"run.name={name}", "data.size=[48, 64]"])
        runs.with_record(cfg, {"bases": resolve_bases(cfg)})
        path = tmp_path / "runs" / name / "best.pt"
        atomic_save(runs.checkpoint_payload(build_ensemble(cfg, init_weights=False), cfg, kind="meta"), path)
        metas.append(path.parent)
    result, _ = compare_json(capsys, *metas, "--baselines", "mean")
    rows = {r["name"]: r for r in result["accuracy"]["rows"]}
    assert rows["Baseline (mean)"]["n_seeds"] == 1 and rows["Baseline (mean)"]["std"] == {}


def test_an_imported_run_has_no_training_data_and_compares_with_trained_ones(capsys, tmp_path, two_runs, synth_root):
    from base_learners.meter import METER
    from ensemble_mde.weights import import_official_weights

    official = tmp_path / "build_model_best_nyu_xxs"
    torch.save(METER("xxs").state_dict(), official)
    imported = tmp_path / "runs" / "meter_xxs_official"
    import_official_weights("meter_xxs", official, imported)
    assert yaml.safe_load((imported / "config.yaml").read_text())["data"]["path"] is None
    result, _ = compare_json(capsys, imported, two_runs[0], "--baselines", "none")
    assert result["info"]["data"] == str(synth_root)
    assert error_line(capsys, "evaluate", imported, "--device", "cpu") == (
        "error: no dataset is set (data.path is null); pass --data PATH")


def test_train_base_help_points_to_a_listing_that_exists(capsys):
    code, out, _ = cli(capsys, "train-base", "--help")
    assert code == 0 and "ensemble profile --list" in out
    code, out, _ = cli(capsys, "profile", "--list")
    assert code == 0 and out.split() == ["adabins", "bts", "ldrn", "meter_s", "meter_xs", "meter_xxs"]


PROBE = """
import runpy, sys
sys.argv = ["ensemble", *sys.argv[1:]]
try:
    runpy.run_module("ensemble_mde", run_name="__main__")
except SystemExit:
    pass
print("imported:", " ".join(m for m in ("torch", "timm") if m in sys.modules))
"""


@pytest.mark.parametrize("args, heavy", [
    (["--help"], ""),
    (["data", "synth", "--out", "{tmp}/synth", "--train", "1", "--val", "0", "--test", "0", "--size", "8x8"], ""),
    (["train-base", "meter_xxs", "--data", "{tmp}/missing"], "torch"),
])
def test_commands_import_only_what_they_use(tmp_path, args, heavy):
    proc = subprocess.run([sys.executable, "-c", PROBE, *(a.format(tmp=tmp_path) for a in args)],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == f"imported: {heavy}".strip(), proc.stderr
