"""METER commands as a user runs them: `import-weights` (official file -> run folder ->
`evaluate`), its one-line errors, the METER configs and presets, training with the
selectivity regulariser, and `selectivity` with histograms and the ablation curve."""

import json
from pathlib import Path

import pytest
import torch

import base_learners
from ensemble_mde.cli import main
from ensemble_mde.metrics import METRIC_KEYS
from ensemble_mde.training.base import base_config

from conftest import SHARED_DATA, run_cli

OFFICIAL_XXS = SHARED_DATA / "meter_official" / "build_model_best_nyu_xxs"
NYU_SAMPLE = SHARED_DATA / "nyu_bts_sample"
METER_LAYERS = ["enc_0", "enc_1", "enc_2", "enc_3", "enc_4", "enc_5", "enc_6", "enc_7", "enc_8", "enc_9",
                "enc_10", "enc_output", "dec_0", "dec_1", "dec_2", "dec_3"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cli(capsys, *args) -> tuple[int, str, str]:
    """`ensemble ARGS` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exited.value.code, out, err


@pytest.mark.skipif(not (OFFICIAL_XXS.is_file() and NYU_SAMPLE.is_dir()), reason="reference data not present")
def test_import_official_weights_then_evaluate_on_real_nyu(tmp_path, capsys):
    run = tmp_path / "meter_xxs_official"
    proc = run_cli("import-weights", "meter_xxs", OFFICIAL_XXS, "--out", run, check=True)
    assert "713,464 parameters" in proc.stdout and "decoder.conv2d_out.weight x 0.01" in proc.stdout
    assert (run / "best.pt").is_file() and (run / "config.yaml").is_file()

    proc = run_cli("evaluate", run, "--data", NYU_SAMPLE, "--json", check=True)
    metrics = json.loads(proc.stdout)
    assert list(metrics) == [*METRIC_KEYS, "n_images"] and len(METRIC_KEYS) == 9
    assert metrics["n_images"] == 1
    assert metrics["abs_rel"] < 0.6 and metrics["d3"] > 0.8  # metres (centimetres would read abs_rel ~ 100)

    code, out, err = cli(capsys, "import-weights", "meter_xxs", OFFICIAL_XXS, "--out", run)
    assert code == 2 and out == "" and err.count("\n") == 1 and "pass --force" in err


def test_a_file_that_does_not_fit_is_one_line_and_leaves_no_run_folder(tmp_path, capsys):
    state = base_learners.create("meter_xxs").state_dict()
    state["decoder.conv_out.weight"] = state.pop("decoder.conv2d_out.weight")
    file = tmp_path / "renamed.pth"
    torch.save(state, file)
    run = tmp_path / "runs" / "meter_xxs_bad"
    code, out, err = cli(capsys, "import-weights", "meter_xxs", file, "--out", run)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and str(file) in err
    assert "missing 1: decoder.conv2d_out.weight" in err and "unexpected 1: decoder.conv_out.weight" in err
    assert not run.exists() and not run.parent.exists()

    code, _, err = cli(capsys, "import-weights", "bts", file, "--out", run)
    assert code == 2 and "no official-weight import for learner 'bts'" in err and not run.exists()


def test_meter_configs_follow_the_paper_and_the_cpu_preset_is_small():
    cfg = base_config("meter_s")
    assert cfg["data"]["size"] == [192, 256] and cfg["augment"]["crop"] is False
    assert cfg["augment"]["rotate_deg"] == 0.0 and cfg["augment"]["flip"] == 0.5
    train = cfg["train"]
    assert (train["lr"], train["weight_decay"], train["batch_size"], train["best_metric"]) == (1e-3, 1e-2, 128, "abs_rel")
    cpu = base_config("meter_xxs", preset="cpu")
    assert cpu["data"]["size"] is None and cpu["data"]["path"].endswith("data/synth")
    assert cpu["train"]["batch_size"] <= 16 and cpu["train"]["max_steps_per_epoch"] > 0
    assert cpu["train"]["lr"] == 1e-3  # the preset only shrinks the run


def test_selectivity_regulariser_in_training_then_dissection_plots_and_ablation(synth_root, tmp_path, capsys):
    run = tmp_path / "meter_tiny"
    code, _, err = cli(capsys, "train-base", "meter_xxs", "--preset", "cpu", "--data", synth_root, "--out", run,
                       "--epochs", "1", "--batch-size", "4", "--set", "train.max_steps_per_epoch=2",
                       "--set", "train.log_every=1", "--selectivity", "enc_4,dec_3", "--alpha", "-0.1",
                       "--no-progress")
    assert code == 0, err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["type"] == "train"]
    assert len(train_records) == 2 and all("selectivity" in r for r in train_records)
    for r in train_records:  # the term is part of the total, alpha * (sum of two layer means in [-1, 1])
        assert -0.2 <= r["selectivity"] <= 0.2
        assert r["total"] == pytest.approx(r["l1"] + 0.5 * r["gradient"] + r["normal"] + r["ssim"] + r["selectivity"],
                                           rel=1e-4)

    out_dir = tmp_path / "selectivity"
    code, out, err = cli(capsys, "selectivity", run, "--data", synth_root, "--json", "--plot", "--ablate",
                         "--random-repeats", "1", "--out", out_dir)
    assert code == 0, err
    result = json.loads(out)
    assert result["n_images"] == 4 and result["split"] == "val" and result["input_size"] == [48, 64]
    assert [r["layer"] for r in result["layers"]] == METER_LAYERS
    units = {r["layer"]: r["units"] for r in result["layers"]}
    assert (units["enc_0"], units["enc_output"], units["dec_0"], units["dec_3"]) == (16, 160, 64, 8)
    for r in result["layers"]:
        assert 0.0 <= r["mean"] <= 1.0 and 0.0 <= r["frac_above"] <= 1.0 and r["bins"] == min(r["units"], 64)
    assert result["average"] == pytest.approx(sum(r["mean"] for r in result["layers"]) / 16)
    curve = result["ablation"]
    best_layer = max(result["layers"], key=lambda r: r["mean"])
    assert curve["layer"] == best_layer["layer"]
    assert curve["k"] == sorted({int(best_layer["units"] * f) for f in (0, 1 / 16, 1 / 8, 1 / 4, 1 / 2)})
    assert curve["top_rmse"][0] == curve["random_rmse"][0] > 0  # nothing zeroed: the same model
    names = {Path(f).name for f in result["files"]}
    assert names == {"selectivity.json", "selectivity_histograms.png", "ablation.json", "ablation.png"}
    for name in ("selectivity_histograms.png", "ablation.png"):
        assert (out_dir / name).read_bytes()[:8] == PNG_SIGNATURE
    saved = json.loads((out_dir / "selectivity.json").read_text())
    assert len(saved["units"]["enc_output"]) == 160 and len(saved["preferred_bin"]["dec_3"]) == 8
    assert json.loads((out_dir / "ablation.json").read_text())["k"] == curve["k"]

    code, out, err = cli(capsys, "selectivity", run, "--data", synth_root, "--layers", "enc_4,dec_9")
    assert code == 2 and out == "" and err.count("\n") == 1 and "unknown selectivity layer 'dec_9'" in err
