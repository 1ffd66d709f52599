"""Faults during training: a non-finite loss stops the run (or is skipped) with the last
good step in last.pt; SIGTERM mid-epoch writes last.pt and a resume finishes the run."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from conftest import run_cli
from ensemble_mde import runs
from ensemble_mde.config import load_config
from ensemble_mde.data import build_dataset
from ensemble_mde.training.engine import EpochSampler, TrainingError, train


class TinyDepth(nn.Module):
    """conv-BN-ReLU-conv: enough to carry BatchNorm statistics a NaN batch would poison."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1))

    def forward(self, rgb):
        return {"depth": nn.functional.softplus(self.net(rgb)) + 1e-3}

    def loss(self, outputs, batch):
        valid = batch["depth"] > 0
        l1 = (outputs["depth"] - batch["depth"]).abs()[valid].mean()
        return {"l1": l1, "total": l1}


class NaNAt(torch.utils.data.Dataset):
    """The wrapped dataset with the RGB of sample `bad` set to NaN."""

    def __init__(self, dataset, bad):
        self.dataset, self.bad = dataset, bad

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        sample = self.dataset[index]
        if index == self.bad:
            sample = {**sample, "rgb": torch.full_like(sample["rgb"], float("nan"))}
        return sample


def _setup(synth_root, skip):
    cfg = load_config(["defaults"], overrides=[
        f"data.path={synth_root}", "data.workers=0", "augment.enabled=false", "train.epochs=1",
        "train.batch_size=4", "train.log_every=1", "train.lr=1e-2", f"train.skip_bad_batches={skip}"])
    cfg["model"] = {"name": "tiny"}
    train_set, val_set = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    order = EpochSampler(len(train_set), seed=0, epoch=0).order()
    bad = order[2 * 4 + 1]  # second sample of the third batch: step 3 goes bad
    return cfg, NaNAt(train_set, bad), val_set


def _finite(state_dict):
    return all(torch.isfinite(v.float()).all() for v in state_dict.values())


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(synth_root, tmp_path):
    cfg, train_set, val_set = _setup(synth_root, skip=0)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError) as e:
        train(TinyDepth(), cfg, train_set, val_set, run_dir, device=torch.device("cpu"), progress=False)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("loss is nan at step 3 (epoch 1, batch 3); stopped, ")
    assert f"{run_dir / 'last.pt'} holds the last good step 2" in message
    ckpt = runs.read_checkpoint(run_dir / "last.pt")                  # loadable with weights_only=True
    assert ckpt["state"]["step"] == 2 and ckpt["state"]["batch_in_epoch"] == 2
    assert _finite(ckpt["model"])                                    # BatchNorm statistics restored too
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert not (run_dir / "summary.json").exists()


def test_skip_bad_batches_skips_and_finishes(synth_root, tmp_path):
    cfg, train_set, val_set = _setup(synth_root, skip=1)
    run_dir = tmp_path / "run"
    summary = train(TinyDepth(), cfg, train_set, val_set, run_dir, device=torch.device("cpu"), progress=False)
    assert summary["steps"] == 3 and summary["bad_batches_skipped"] == 1     # 16 frames / 4 = 4 batches, one skipped
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["type"], r["step"]) for r in records] == [("train", 1), ("train", 2), ("skip", 2), ("train", 3),
                                                         ("val", 3)]
    assert records[2]["reason"] == "loss is nan" and math.isfinite(records[3]["total"])
    assert _finite(runs.read_checkpoint(run_dir / "last.pt")["model"])


ARGS = ["--epochs", "2", "--batch-size", "4", "--device", "cpu", "--no-progress", "--set", "data.workers=1",
        "--set", "train.log_every=1", "--set", "train.max_steps_per_epoch=3"]


def test_sigterm_mid_epoch_saves_last_and_resume_completes(synth_root, tmp_path):
    """SIGTERM: the step in progress finishes, last.pt is written, one line says how to
    resume, exit code 143 (128 + SIGTERM: the run is not finished)."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "ensemble_mde", "train-base", "meter_xxs", "--data", str(synth_root),
               "--out", str(run_dir), *ARGS]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (log.exists() and log.read_text().strip()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)                              # during step 2 of 3 in epoch 1
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    state = runs.read_checkpoint(run_dir / "last.pt")["state"]
    n = state["step"]
    assert state["epoch"] == 0 and 1 <= n < 3 and state["batch_in_epoch"] == n
    assert err.strip() == (f"stopped by SIGTERM after step {n} (batch {n} of epoch 1); saved "
                           f"{run_dir / 'last.pt'}; run the same command with --resume to continue")
    assert not (run_dir / "summary.json").exists()

    saved_lr = runs.read_checkpoint(run_dir / "last.pt")["config"]["train"]["lr"]
    resumed = run_cli("train-base", "meter_xxs", "--data", synth_root, "--out", run_dir, *ARGS, "--resume",
                      "--lr", "0.5", check=True)                       # a changed flag is named, not applied
    assert resumed.returncode == 0
    assert (f"note: resuming {run_dir} with the config it started with; not applied: train.lr=0.5 "
            f"(the run has {saved_lr})") in " ".join(resumed.stdout.split())
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 6
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if json.loads(line)["type"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
