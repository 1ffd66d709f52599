"""`ensemble evaluate` runs the model at the input size it was trained at and scores against
GT at its own resolution."""

import json

import torch

from conftest import run_cli


def test_evaluate_uses_the_runs_input_size(synth_root, tmp_path):
    from ensemble_mde.data import build_dataset
    from ensemble_mde.evaluation import evaluate_model
    from ensemble_mde.loading import load_any_run

    run = tmp_path / "bts"
    run_cli("train-base", "bts", "--data", synth_root, "--out", run, "--size", "32x64", "--epochs", "1",
            "--batch-size", "4", "--device", "cpu", "--no-progress", "--set", "data.workers=0",
            "--set", "train.max_steps_per_epoch=2", "--set", "model.pretrained=false", check=True)
    printed = json.loads(run_cli("evaluate", run, "--split", "test", "--json", check=True).stdout)

    model, cfg = load_any_run(run, device=torch.device("cpu"), for_inference=True)
    cfg["data"]["size"] = None  # frames and GT at their own 48x64
    frames = build_dataset(cfg, "test", augment=False)
    at_input_size, at_frame_size = (
        evaluate_model(model, frames, device=torch.device("cpu"), input_size=size).compute()["rmse"]
        for size in ((32, 64), None))
    assert printed["n_images"] == 4
    assert abs(printed["rmse"] - at_input_size) < 1e-6
    assert abs(at_input_size - at_frame_size) > 1e-4  # the input size matters, so the check above can fail
