"""Hostile input to compare, evaluate and profile, and the bounds compare reports (issue 24,
group D): damaged run files are one `error:` line naming the file, or a skipped log line with
a warning; the convex oracle bounds what a stacked ensemble outputs as compare scores it (flip
TTA, upsampling); an imported run is compared by default; a freeze ensemble validates as
`evaluate` scores it."""

import json

import pytest
import torch

from ensemble_mde import runs
from test_hostile_input import FAST, cli, compare_json, error_line, write_run

COMPARE = ["--no-compute", "--no-progress", "--device", "cpu"]


@pytest.fixture
def two_runs(tmp_path, synth_root):
    """Two seeds of one finished meter_xxs run in tmp_path/runs (validation RMSE 1.0 and 2.0)."""
    return [write_run(tmp_path / "runs" / f"meter_{i}", synth_root, seed=i, val_rmse=1.0 + i) for i in range(2)]


# ------------------------------------------------------------------ 7: damaged run files

@pytest.mark.parametrize("text, problem", [(b"[]", "not a JSON object"), (b"null", "not a JSON object"),
                                           (b'{"epochs": 1, "train_seconds": "1:02"}',
                                            "train_seconds is '1:02', not a number")])
def test_compare_over_a_summary_that_is_json_but_no_summary_is_one_line(capsys, two_runs, text, problem):
    (two_runs[1] / "summary.json").write_bytes(text)
    assert error_line(capsys, "compare", *two_runs, *COMPARE) == (
        f"error: {two_runs[1] / 'summary.json'}: not a run summary ({problem}); delete it and rerun the command "
        "that wrote it (training: the same command with --resume)")


def test_log_lines_that_are_json_but_no_record_are_skipped_with_a_warning(capsys, two_runs, tmp_path):
    log = two_runs[1] / "metrics.jsonl"         # line 1: the val record of best.pt, rmse 2.0
    log.write_bytes(log.read_bytes() + b'{"type": "val", "epoch": 1, "step": 1, "rmse": "n/a", "best": true}\n'
                    b'{}\n{"type": "train", "epoch": 1, "step": 2}\n')
    result, err = compare_json(capsys, *two_runs, "--baselines", "weighted", "--out", tmp_path / "report")
    assert err.strip().splitlines()[0] == (f"warning: {log}: skipped line(s) 2, 3, 4, not a valid log record (a "
                                           "half-written line is what a crash leaves)")
    assert "Weighted (1/val RMSE)" in [r["name"] for r in result["accuracy"]["rows"]]   # from the good line
    assert (tmp_path / "report" / "training_curves.png").is_file()


def test_a_resume_cuts_back_a_log_holding_junk_records(tmp_path):
    folder = runs.RunFolder(tmp_path / "run")
    folder.path.mkdir()
    good = [{"type": "train", "epoch": 1, "step": 1, "total": 0.5}, {"type": "val", "epoch": 1, "step": 2, "rmse": 1.0},
            {"type": "train", "epoch": 2, "step": 3, "total": 0.4}]
    folder.metrics_file.write_text("\n".join(map(json.dumps, good[:2])) + '\n{"type": "train", "step": "3"}\n'
                                   + json.dumps(good[2]) + '\n{"type": "val", "ep')
    folder.truncate_log_after(2)
    assert folder.log_entries() == (good[:2], [])


def test_compare_over_an_empty_config_is_one_line_and_the_checkpoint_stands_in(capsys, two_runs):
    config = two_runs[1] / "config.yaml"
    config.write_text("")
    assert error_line(capsys, "compare", *two_runs, *COMPARE) == (
        f"error: {config}: not a run config (no run section: empty or cut short); delete it, the run's checkpoint "
        "holds its config too")
    config.unlink()
    result, _ = compare_json(capsys, *two_runs, "--baselines", "none")
    assert [r["n_seeds"] for r in result["accuracy"]["rows"]] == [2]


# ------------------------------------------------------------------ 18: the convex oracle bounds what compare scores

def test_the_convex_oracle_bounds_a_blend_made_before_flip_tta_and_upsampling():
    from ensemble_mde.compare.passes import convex_hull, upsample
    from meta_learner.baselines import BASELINES
    from meta_learner.ensemble import blend

    torch.manual_seed(0)
    k, low, size = 3, (6, 8), (24, 32)
    views = [0.5 + 9 * torch.rand(2, *low) for _ in range(k)]        # each base: straight, mirrored flipped back
    straight, mirrored = (torch.stack([v[j] for v in views])[None] for j in (0, 1))
    weights = [torch.softmax(4 * torch.randn(1, k, *low), dim=1) for _ in range(2)]   # a meta-learner, per pass
    stacked = upsample(0.5 * (blend(weights[0], straight) + blend(weights[1], mirrored)), size)
    tta = upsample(0.5 * (straight + mirrored), size)                 # each base as compare scores it
    gt = 0.5 + 9 * torch.rand(1, 1, *size)
    convex = BASELINES["convex"]()(convex_hull(views, size), gt)

    def error(depth):
        return (depth - gt).abs()

    for name, depth in {"stacked": stacked, "mean": tta.mean(dim=1, keepdim=True),
                        **{f"base {i}": tta[:, i:i + 1] for i in range(k)}}.items():
        assert bool((error(convex) <= error(depth) + 1e-5).all()), name
    # the range of the scored maps alone is no bound: the stacked ensemble passes it on some pixels
    assert bool((error(BASELINES["convex"]()(tta, gt)) > error(stacked) + 1e-3).any())


def test_the_oracle_note_says_which_ensembles_the_convex_oracle_bounds(capsys, two_runs):
    result, _ = compare_json(capsys, *two_runs, "--baselines", "mean,convex", "--flip-tta")
    note = next(n for n in result["accuracy"]["notes"] if n.startswith("†"))
    assert "with flip TTA, of their straight and mirrored maps" in note
    assert "freeze-mode softmax ensemble of these bases" in note and "does not bound a finetuned" in note


# ------------------------------------------------------------------ 19: a freeze ensemble validates as evaluate scores it

def test_a_freeze_ensemble_validates_as_evaluate_scores_it_up_to_its_float16_cache(capsys, tmp_path, synth_root):
    bases = []
    for seed in (0, 1):
        bases.append(tmp_path / f"meter_{seed}")
        code, _, err = cli(capsys, "train-base", "meter_xxs", "--data", synth_root, "--out", bases[-1], "--epochs", "1",
                           "--size", "32x48", "--seed", seed, *FAST)
        assert code == 0, err
    meta = tmp_path / "meta"
    code, _, err = cli(capsys, "train-meta", "--inputs", "rgb+d", "--freeze", "--bases", ",".join(map(str, bases)),
                       "--out", meta, "--epochs", "1", "--set", "meta.pretrained=false",
                       "--set", f"ensemble.cache_dir={tmp_path / 'cache'}", *FAST)
    assert code == 0, err
    validated = json.loads((meta / "summary.json").read_text())["last_val"]
    code, out, err = cli(capsys, "evaluate", meta, "--split", "val", "--json", "--device", "cpu")
    assert code == 0, err
    evaluated = json.loads(out)
    for key in ("abs_rel", "rmse", "rmse_log", "d1", "silog"):
        assert evaluated[key] == pytest.approx(validated[key], rel=1e-3, abs=1e-4), key


# ------------------------------------------------------------------ compare and profile: smaller things

def test_the_default_compare_takes_an_imported_run_beside_trained_ones(capsys, tmp_path, two_runs):
    from base_learners.meter import METER
    from ensemble_mde.weights import import_official_weights

    official = tmp_path / "build_model_best_nyu_xxs"
    torch.save(METER("xxs").state_dict(), official)
    import_official_weights("meter_xxs", official, tmp_path / "runs" / "meter_xxs_official")
    result, _ = compare_json(capsys, "--runs-dir", tmp_path / "runs", "--baselines", "none")
    rows = {r["name"]: r["n_seeds"] for r in result["accuracy"]["rows"]}
    assert rows == {"meter_xxs [meter_0]": 2, "meter_xxs [meter_xxs_official]": 1}


def test_compare_over_a_runs_dir_that_is_missing_or_empty_names_it(capsys, tmp_path):
    assert error_line(capsys, "compare", "--runs-dir", tmp_path / "nowhere", *COMPARE) == (
        f"error: {tmp_path / 'nowhere'}: runs folder not found (--runs-dir)")
    (tmp_path / "empty").mkdir()
    assert error_line(capsys, "compare", "--runs-dir", tmp_path / "empty", *COMPARE).startswith(
        f"error: {tmp_path / 'empty'}: no finished or imported run")


@pytest.mark.parametrize("args, message", [
    (["compare", "--bootstrap", "-1"], "--bootstrap: must be at least 0, got -1"),
    (["compare", "--repeats", "0"], "--repeats: must be at least 1, got 0"),
    (["profile", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["evaluate", "--batch-size", "-2"], "--batch-size: must be at least 1, got -2"),
    (["profile", "--size", "0x48"], "size '0x48' must be positive"),
])
def test_counts_and_sizes_out_of_range_are_one_line(capsys, two_runs, args, message):
    assert error_line(capsys, *args, two_runs[0], "--device", "cpu") == f"error: {message}"


# ------------------------------------------------------------------ weights that hold NaN or inf

def test_weights_holding_nan_or_inf_are_refused_in_one_line_before_any_depth_is_written(capsys, tmp_path,
                                                                                        synth_root):
    import numpy as np
    from PIL import Image

    run = write_run(tmp_path / "run", synth_root)
    ckpt = runs.read_checkpoint(run / "best.pt")
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.ndim == 4)
    ckpt["model"][key].view(-1)[3] = float("nan")
    torch.save(ckpt, run / "best.pt")
    image = tmp_path / "room.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image)
    expected = f"error: {run / 'best.pt'}: weights hold NaN or inf in 1 tensor(s): {key}; retrain or re-import them"
    assert error_line(capsys, "predict", run, image, "--out", tmp_path / "pred", "--device", "cpu") == expected
    assert not (tmp_path / "pred").exists() or not any((tmp_path / "pred").iterdir())
    assert error_line(capsys, "evaluate", run, "--data", synth_root, "--device", "cpu") == expected

    from base_learners.meter import METER

    official = METER("xxs").state_dict()
    official["decoder.conv2d_out.weight"].fill_(float("inf"))
    torch.save(official, tmp_path / "build_model_best_nyu_xxs")
    assert error_line(capsys, "import-weights", "meter_xxs", tmp_path / "build_model_best_nyu_xxs", "--out",
                      tmp_path / "imported") == (f"error: {tmp_path / 'build_model_best_nyu_xxs'}: weights hold NaN "
                                                 "or inf in 1 tensor(s): decoder.conv2d_out.weight; retrain or "
                                                 "re-import them")
    assert not (tmp_path / "imported" / "best.pt").exists()
