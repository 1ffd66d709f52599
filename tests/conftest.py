"""Shared fixtures: a tiny synthetic dataset rendered once per test session."""

import os
import subprocess
import sys
import tempfile

# Before anything imports huggingface_hub (which reads these once): tests never reach the
# Hugging Face hub, and see no cache but the ones they write (`hf_cache`).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="ensemble_mde_tests_hf_")

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


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache that the test fills itself: `write(name)` stores random
    weights of the timm classifier `name` as `model.safetensors` where timm's hub mechanism
    looks (HF_HOME/hub/models--timm--<name>.<tag>/snapshots/<rev>/) and returns them.
    HF_HOME and HF_HUB_OFFLINE=1 are set for this process and for CLI subprocesses."""
    import huggingface_hub.constants as hf_constants
    import timm
    from safetensors.torch import save_file

    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    def write(name: str, seed: int = 7) -> dict:
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False)
        state = {k: (torch.randn_like(v) if v.is_floating_point() else v).contiguous()
                 for k, v in model.state_dict().items()}
        repo = home / "hub" / f"models--{model.pretrained_cfg['hf_hub_id'].replace('/', '--')}"
        revision = "0" * 40
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(revision)
        (repo / "snapshots" / revision).mkdir(parents=True)
        save_file(state, str(repo / "snapshots" / revision / "model.safetensors"))
        return state

    write.home = home
    return write


def stage_report(model: nn.Module, paths, *inputs) -> dict:
    """{module path: (output shape without the batch, its parameter count)} for one forward
    pass of `model(*inputs)` under no_grad: a torchinfo-like row per named stage."""
    shapes = {}

    def record(path):
        def hook(module, args, output):
            shapes[path] = tuple(output.shape[1:])
        return hook

    handles = [model.get_submodule(path).register_forward_hook(record(path)) for path in paths]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return {path: (shapes[path], sum(p.numel() for p in model.get_submodule(path).parameters())) for path in paths}
