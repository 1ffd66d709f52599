"""A run folder written before the redesign (tests/fixtures/meter_xxs_2026_12: meter_xxs,
one epoch of two steps on the 48x64 synthetic set of `synth_root`, made by the code of
commit 2d12dd7; its last.pt is left out) still loads, evaluates and compares."""

import json
import shutil
from pathlib import Path

import pytest

from ensemble_mde.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "meter_xxs_2026_12"


def cli_json(capsys, *args) -> dict:
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert done.value.code == 0, err
    return json.loads(out)


def test_an_old_run_folder_loads_evaluates_and_compares(synth_root, tmp_path, capsys):
    from ensemble_mde.loading import load_any_run

    run = shutil.copytree(FIXTURE, tmp_path / "meter_xxs_2026_12")
    model, cfg = load_any_run(run)
    assert cfg["model"]["name"] == "meter_xxs" and sum(p.numel() for p in model.parameters()) == 713_464
    saved = json.loads((run / "summary.json").read_text())
    val = cli_json(capsys, "evaluate", run, "--data", synth_root, "--split", "val", "--json", "--device", "cpu")
    # the same frames as it was validated on when it trained: the same score
    assert val["n_images"] == 4 and val["rmse"] == pytest.approx(saved["last_val"]["rmse"], rel=1e-5)
    table = cli_json(capsys, "compare", run, "--data", synth_root, "--format", "json", "--device", "cpu",
                     "--baselines", "mean", "--no-compute")
    rows = {r["name"]: r for r in table["accuracy"]["rows"]}
    assert rows["meter_xxs"]["values"]["rmse"] > 0
