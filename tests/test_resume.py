"""A run killed with SIGKILL mid-epoch and resumed ends exactly like an uninterrupted one."""

import json
import signal
import subprocess
import sys
import time

import torch

from conftest import run_cli

ARGS = ["--epochs", "2", "--batch-size", "4", "--seed", "5", "--device", "cpu", "--no-progress",
        "--set", "train.checkpoint_every=1", "--set", "data.workers=0", "--set", "train.lr=1e-3",
        "--set", "model.pretrained=false"]


def _state(last):
    try:
        return torch.load(last, weights_only=True)["state"]
    except Exception:  # being renamed into place
        return None


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(synth_root, tmp_path):
    learner = "ldrn"
    run_cli("train-base", learner, "--data", synth_root, "--out", tmp_path / "whole", *ARGS, check=True)
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())

    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "ensemble_mde", "train-base", learner, "--data", str(synth_root),
                             "--out", str(cut), *ARGS], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        seen = _state(cut / "last.pt") if (cut / "last.pt").exists() else None
        if seen and seen["epoch"] == 1 and seen["batch_in_epoch"] >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert seen is not None and seen["batch_in_epoch"] >= 1          # killed inside the second epoch
    assert not (cut / "summary.json").exists()

    run_cli("train-base", learner, "--data", synth_root, "--out", cut, *ARGS, "--resume", check=True)
    resumed = json.loads((cut / "summary.json").read_text())
    assert resumed["steps"] == whole["steps"]
    assert resumed["last_val"] == whole["last_val"]                    # bit-identical metrics
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    b = torch.load(cut / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # metrics.jsonl holds each training record once (records after the last checkpoint were dropped)
    steps = [json.loads(l)["step"] for l in (cut / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["type"] == "train"]
    assert steps == sorted(set(steps))
