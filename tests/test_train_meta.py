"""train-meta end to end at tiny size: freeze with the cache, the run folder describes the
whole ensemble, evaluate/predict accept it, a changed base is refused."""

import json

import pytest
import torch

from conftest import run_cli

TINY = ["--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-progress",
        "--set", "data.workers=0", "--set", "train.max_steps_per_epoch=2"]


@pytest.fixture(scope="module")
def bases(synth_root, tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs")
    for name in ("bts", "meter_xxs"):
        run_cli("train-base", name, "--data", synth_root, "--out", runs_dir / name, *TINY,
                "--set", "data.size=null", check=True)
    return runs_dir


def test_freeze_meta_run_is_self_describing(bases, synth_root, tmp_path):
    base_runs = f"{bases / 'bts'},{bases / 'meter_xxs'}"
    out = tmp_path / "meta"
    proc = run_cli("train-meta", "--inputs", "rgb+d", "--freeze", "--bases", base_runs, "--out", out,
                   "--set", f"ensemble.cache_dir={tmp_path / 'cache'}", *TINY, check=True)
    assert "bases: bts" in proc.stdout
    ckpt = torch.load(out / "best.pt", weights_only=True)
    resolved = ckpt["config"]["ensemble"]["resolved"]
    assert [r["name"] for r in resolved] == ["bts", "meter_xxs"] and all(len(r["sha256"]) == 64 for r in resolved)
    # frozen: the ensemble's base weights are the base checkpoints' weights, bit for bit
    base_state = torch.load(bases / "bts" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(ckpt["model"][f"bases.0.{k}"], v) for k, v in base_state.items())
    assert len(list((tmp_path / "cache").glob("preds-*.h5"))) == 1

    result = run_cli("evaluate", out, "--json", check=True)
    metrics = json.loads(result.stdout)
    assert metrics["n_images"] == 4 and metrics["rmse"] > 0

    image = next((synth_root / "data" / "nyu2_test").glob("*_colors.png"))
    pred = run_cli("predict", out, image, "--out", tmp_path / "pred", check=True)
    assert (tmp_path / "pred" / f"{image.stem}_weights.png").is_file(), pred.stdout

    # a second meta run on the same bases and data reuses the cache file
    run_cli("train-meta", "--inputs", "d", "--freeze", "--bases", base_runs, "--out", tmp_path / "meta_d",
            "--set", f"ensemble.cache_dir={tmp_path / 'cache'}", *TINY, check=True)
    assert len(list((tmp_path / "cache").glob("preds-*.h5"))) == 1

    # a base checkpoint that changed afterwards makes the meta run refuse to load
    changed = torch.load(bases / "bts" / "best.pt", weights_only=True)
    changed["epoch"] = 99
    torch.save(changed, bases / "bts" / "best.pt")
    refused = run_cli("evaluate", out, "--json")
    assert refused.returncode == 2
    assert "changed since the meta-learner was trained" in refused.stderr and len(refused.stderr.splitlines()) == 1


def test_simultaneous_accepts_learner_names(synth_root, tmp_path):
    out = tmp_path / "sim"
    run_cli("train-meta", "--inputs", "rgb", "--simultaneous", "--bases", "bts,meter_xxs", "--data", synth_root,
            "--out", out, *TINY, "--set", "data.size=null", check=True)
    terms = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_terms = [t for t in terms if t["type"] == "train"][-1]
    assert {"silog", "base_bts", "base_meter_xxs", "total"} <= set(train_terms)
