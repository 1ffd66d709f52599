"""Shared fixtures: a tiny synthetic dataset rendered once per test session."""

import os
import subprocess
import sys

from pathlib import Path

import pytest
import torch
from torch import nn

from base_learners.common import DepthLearner

torch_threads = os.environ.setdefault("OMP_NUM_THREADS", "2")

# The real reference files (../shared/data beside the checkout; CI has it there too).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A 48x64 synthetic NYU-like dataset in the densedepth layout (16 train, 4 val, 4 test)."""
    from ensemble_mde.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth")
    synthesize(root, counts={"train": 16, "val": 4, "test": 4}, size=(48, 64), seed=0, progress=False, workers=1)
    return root


def run_cli(*args, timeout=600, check=False):
    """Run `python -m ensemble_mde ARGS` as a user would; returns CompletedProcess."""
    proc = subprocess.run([sys.executable, "-m", "ensemble_mde", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ensemble {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


class TinyLearner(DepthLearner):
    """conv -> BN -> ReLU -> conv -> sigmoid * max_depth; loss = masked L1 (+ "total")."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, rgb):
        return {"depth": torch.sigmoid(self.conv2(torch.relu(self.bn(self.conv1(self.normalize(rgb)))))) * self.max_depth}

    def loss(self, outputs, batch):
        mask = self.valid(batch["depth"])
        l1 = (outputs["depth"] - batch["depth"])[mask].abs().mean()
        return {"l1": l1, "total": l1}
