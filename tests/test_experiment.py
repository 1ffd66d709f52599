"""experiment: a tiny study (synthetic 48x64, two bases, one freeze meta) runs end to end through
the Python API; a second invocation (the CLI) skips the finished steps; compare's CLI and its
one-line errors."""

import copy
import json
import shutil

import pytest
import torch
import yaml

from conftest import run_cli
from ensemble_mde import runs
from ensemble_mde.errors import ConfigError
from ensemble_mde.config import Setting
from ensemble_mde.experiment import load_experiment, override_settings, plan, run_experiment, stale_reason

TWO_STEPS = {"data.workers": 0, "augment.crop": False,
             "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "val_batch_size": 4}}


def tiny_experiment(out):
    return {
        "name": "tiny",
        "out": str(out),
        "device": "cpu",
        "data": {"synth": {"train": 12, "val": 4, "test": 4, "size": [48, 64], "seed": 0}},
        "bases": [{"name": "meter_xxs", "preset": "cpu", "overrides": TWO_STEPS},
                  {"name": "bts", "preset": "cpu", "overrides": TWO_STEPS}],
        "meta": [{"inputs": "rgb+d", "mode": "freeze", "preset": "cpu", "overrides": TWO_STEPS}],
        "compare": {"bootstrap": 100, "measure": False, "figure_images": 2},
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny experiment run once; yields (experiment file, out folder, result)."""
    root = tmp_path_factory.mktemp("exp")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_experiment(root / "out")))
    result = run_experiment(load_experiment(path), progress=False)
    return path, root / "out", result


def test_tiny_experiment_trains_compares_and_reports(finished):
    _, out, result = finished
    steps = json.loads((out / "experiment.json").read_text())["steps"]
    assert [s["kind"] for s in steps] == ["data", "base", "base", "meta", "compare"]
    assert all(s["status"] == "new" for s in steps)
    for run in ("meter_xxs", "bts", "meta_rgbd_freeze"):
        assert (out / "runs" / run / "summary.json").is_file() and (out / "runs" / run / "best.pt").is_file()
    names = [v.name for v in result["comparison"].variants]
    assert names == ["meter_xxs", "bts", "Baseline (mean)", "Median", "Weighted (1/val RMSE)", "Oracle (selection)",
                     "Oracle (convex blend)", "SG rgb+d freeze"]
    report = out / "report"
    for name in ("report.md", "accuracy.md", "accuracy.tex", "accuracy.csv", "accuracy.json", "compute.md",
                 "per_image.csv", "bootstrap.json", "qualitative.png", "weight_maps.png", "training_curves.png"):
        assert (report / name).is_file(), name
    text = (report / "report.md").read_text()
    assert "![qualitative](qualitative.png)" in text and "SG rgb+d freeze" in text
    saved = (out / "runs" / "meta_rgbd_freeze" / "config.yaml").read_text()
    assert "&id" not in saved and "*id" not in saved              # values in full, not YAML anchors and aliases
    # two bases: the median is the mean, to the last digit; the selection oracle is at least as good as either
    # base in REL; the convex oracle at least as good as every row on every metric but SILog
    table = json.loads((report / "accuracy.json").read_text())
    rows = {r["name"]: r["values"] for r in table["rows"]}
    assert rows["Median"]["rmse"] == pytest.approx(rows["Baseline (mean)"]["rmse"], rel=1e-12)
    assert rows["Oracle (selection)"]["abs_rel"] <= min(rows["meter_xxs"]["abs_rel"], rows["bts"]["abs_rel"]) + 1e-12
    convex = rows["Oracle (convex blend)"]
    for name, values in rows.items():
        for key in ("abs_rel", "rmse", "rmse_log", "log10"):
            assert convex[key] <= values[key] + 1e-9, (name, key)
    assert "Oracle (convex blend): per pixel the GT clipped into the range" in " ".join(table["notes"])


def test_second_invocation_skips_finished_steps(finished):
    path, out, _ = finished
    best = out / "runs" / "meter_xxs" / "best.pt"
    stamp = best.stat().st_mtime_ns
    shutil.copy(out / "report" / "training_curves.png", out / "runs" / "meter_xxs" / "lr_find.png")
    proc = run_cli("experiment", path, "--no-progress", check=True)
    assert "skip train meter_xxs" in proc.stderr and "skip train meta_rgbd_freeze" in proc.stderr  # status: stderr
    steps = json.loads((out / "experiment.json").read_text())["steps"]
    assert [s["status"] for s in steps] == ["done", "done", "done", "done", "new"]
    assert best.stat().st_mtime_ns == stamp
    # plots the runs' own tools wrote are linked from the report
    assert "[meter_xxs/lr_find.png](../runs/meter_xxs/lr_find.png)" in (out / "report" / "report.md").read_text()


def test_compare_cli_formats_and_a_data_mismatch(finished, tmp_path):
    _, out, _ = finished
    meta = out / "runs" / "meta_rgbd_freeze"
    proc = run_cli("compare", meta, "--no-compute", "--baselines", "mean", "--format", "json", "--no-progress",
                   check=True)
    data = json.loads(proc.stdout)
    assert [r["name"] for r in data["accuracy"]["rows"]] == ["meter_xxs", "bts", "Baseline (mean)",
                                                             "SG rgb+d freeze"]
    assert data["info"]["n_images"] == 4

    moved = tmp_path / "other_meter"
    shutil.copytree(out / "runs" / "meter_xxs", moved)
    cfg = yaml.safe_load((moved / "config.yaml").read_text())
    cfg["data"]["path"] = str(tmp_path / "elsewhere")
    (moved / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli("compare", out / "runs" / "meter_xxs", moved, "--no-compute")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: the runs were trained on different data") and "--data" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_plan_resumes_a_run_with_last_pt_only(tmp_path):
    exp = load_experiment(tiny_experiment(tmp_path / "out"))
    (tmp_path / "out" / "runs" / "meter_xxs").mkdir(parents=True)
    (tmp_path / "out" / "runs" / "meter_xxs" / "last.pt").write_bytes(b"")
    status = {s.label: s.status for s in plan(exp)}
    assert status["train meter_xxs"] == "resume"
    assert status["train meta_rgbd_freeze (meta rgb+d freeze)"] == "new"


def test_experiment_file_errors_name_the_key(tmp_path):
    exp = tiny_experiment(tmp_path)
    exp["bases"][0]["sedes"] = [0]
    with pytest.raises(ConfigError, match="unknown key 'sedes'.*'seeds'"):
        load_experiment(exp)
    exp = tiny_experiment(tmp_path)
    exp["meta"][0]["bases"] = ["adabins"]
    with pytest.raises(ConfigError, match="'adabins' is not a base of this experiment"):
        plan(load_experiment(exp))
    exp["meta"][0]["bases"] = ["bts"]
    with pytest.raises(ConfigError, match="at least 2 bases"):
        plan(load_experiment(exp))
    exp = tiny_experiment(tmp_path)
    exp["bases"][0]["overrides"] = {"train.epoch": 1}
    with pytest.raises(ConfigError, match="train.epoch"):
        plan(load_experiment(exp))


def test_overrides_keep_the_types_the_file_gave():
    texts, settings = override_settings({"train": {"epochs": 2, "lr": 1e-3}, "augment.crop_size": [96, 128],
                                         "data.path": "x y #2", "run.name": "0123"}, "o")
    assert texts == [] and settings == [Setting("train.epochs", 2, "o"), Setting("train.lr", 1e-3, "o"),
                                        Setting("augment.crop_size", [96, 128], "o"),
                                        Setting("data.path", "x y #2", "o"), Setting("run.name", "0123", "o")]
    assert override_settings(["train.epochs=2"], "o") == (["train.epochs=2"], [])
    with pytest.raises(ConfigError):
        override_settings(["train.epochs"], "o")


def test_each_base_runs_at_its_own_input_size_and_the_compute_counts_it(finished, capsys):
    """meter_xxs trained at 48x64 (native), bts at 64x96: inside the ensemble each sees its own size,
    on the grid of the larger one, and the ensemble's GMACs include both bases at those sizes."""
    from ensemble_mde.cli import main
    from ensemble_mde.loading import load_any_run
    from ensemble_mde.profiling import count_gmacs

    _, out, _ = finished
    model, cfg = load_any_run(out / "runs" / "meta_rgbd_freeze")
    assert runs.data_view(cfg)["data"]["size"] == [64, 96]      # the larger base's size, whatever the order
    seen = {}
    for name, base in zip(model.names, model.bases):
        base.register_forward_hook(lambda m, args, output, name=name: seen.update({name: tuple(args[0].shape[-2:])}))
    outputs = model(torch.rand(1, 3, 64, 96))
    assert seen == {"meter_xxs": (48, 64), "bts": (64, 96)}
    assert tuple(outputs["base_depths"].shape) == (1, 2, 64, 96)

    with pytest.raises(SystemExit):
        main(["profile", str(out / "runs" / "meta_rgbd_freeze"), "--json", "--repeats", "1", "--device", "cpu"])
    profile = json.loads(capsys.readouterr().out)
    bases = count_gmacs(model.bases[0], (48, 64)) + count_gmacs(model.bases[1], (64, 96))
    assert profile["input_size"] == [64, 96] and profile["gmacs"] > bases   # the U-Net comes on top of both


def experiment_cli(capsys, path) -> str:
    """What `ensemble experiment PATH --no-progress` run in this process prints (it must
    succeed): the status lines (stderr, beside the progress bars), then the tables (stdout)."""
    from ensemble_mde.cli import main

    with pytest.raises(SystemExit) as e:
        main(["experiment", str(path), "--no-progress"])
    out, err = capsys.readouterr()
    assert e.value.code == 0, err
    return err + out


def test_a_changed_experiment_reruns_its_stale_steps_and_says_why(tmp_path, capsys):
    """Re-rendered data (synth seed 0 -> 1) makes the finished base run stale: it is trained again,
    and a third invocation with the same file skips it."""
    exp = copy.deepcopy(tiny_experiment(tmp_path / "out"))
    exp["bases"] = exp["bases"][:1]
    exp["meta"] = []
    exp["compare"] = {"baselines": ["mean"], "bootstrap": 0, "measure": False, "figure_images": 0}
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(exp))
    experiment_cli(capsys, path)
    best = tmp_path / "out" / "runs" / "meter_xxs" / "best.pt"
    first = best.read_bytes()

    exp["data"]["synth"]["seed"] = 1
    path.write_text(yaml.safe_dump(exp))
    out = experiment_cli(capsys, path)
    assert "stale train meter_xxs" in out and "the dataset changed" in out
    steps = json.loads((tmp_path / "out" / "experiment.json").read_text())["steps"]
    assert [s["status"] for s in steps] == ["new", "stale", "new"]
    assert best.read_bytes() != first

    assert "skip train meter_xxs" in experiment_cli(capsys, path)


def test_stale_reason_names_what_changed():
    recorded = {"config": {"train": {"epochs": 1}}, "data": "d0", "bases": {"bts": "h0", "ldrn": "h1"}}
    assert stale_reason(recorded, recorded) is None
    assert stale_reason(None, recorded).startswith("no record of the inputs")
    current = {"config": {"train": {"epochs": 2}}, "data": "d1", "bases": {"bts": "h0", "ldrn": "h2"}}
    assert stale_reason(recorded, current) == ("config train.epochs 1 -> 2; the dataset changed (its list files or "
                                               "synthetic.json differ); base ldrn was retrained")
