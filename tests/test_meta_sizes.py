"""Each base of a stacked ensemble runs at its own input size, whatever the order of --bases,
and the ensemble's compute counts what runs (issue 24, item 17: with `--bases meter_xxs,bts`
bts ran at meter's size, and the ensemble's GMACs came out below bts's alone)."""

import json

import pytest
import torch

from conftest import TinyLearner, run_cli
from meta_learner import StackedEnsemble, WeightingNetwork

TINY = ["--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-progress",
        "--set", "data.workers=0", "--set", "train.max_steps_per_epoch=2"]
SIZES = {"bts": (32, 48), "meter_xxs": (48, 64)}   # each base's own data.size


class SizeRecorder(TinyLearner):
    """TinyLearner that records the input sizes [H, W] it saw."""

    def __init__(self, seed):
        super().__init__(seed)
        self.seen = []

    def forward(self, rgb):
        self.seen.append(tuple(rgb.shape[-2:]))
        return super().forward(rgb)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_each_base_sees_its_own_input_size_in_either_order(order):
    sizes = [(32, 48), (48, 64)]
    bases = [SizeRecorder(i) for i in order]
    ensemble = StackedEnsemble(bases, WeightingNetwork(2, "rgb+d"), ["a", "b"], input_sizes=[sizes[i] for i in order],
                               grid_size=(48, 64)).eval()
    with torch.no_grad():
        out = ensemble(torch.rand(1, 3, 48, 64))
        half = ensemble(torch.rand(1, 3, 24, 32))   # a crop of half the grid: each base at half its size
    assert out["depth"].shape == (1, 1, 48, 64) and out["base_depths"].shape == (1, 2, 48, 64)
    assert half["base_depths"].shape == (1, 2, 24, 32)
    for base, i in zip(bases, order):
        assert base.seen == [sizes[i], (sizes[i][0] // 2, sizes[i][1] // 2)]


@pytest.fixture(scope="module")
def sized_bases(synth_root, tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("sized_runs")
    for name, (h, w) in SIZES.items():
        weights = ["--set", "model.pretrained=false"] if name == "bts" else []
        run_cli("train-base", name, "--data", synth_root, "--out", runs_dir / name, *TINY,
                "--set", f"data.size=[{h},{w}]", *weights, check=True)
    return runs_dir


def profile(run, *args):
    return json.loads(run_cli("profile", run, "--json", "--repeats", "1", "--device", "cpu", *args,
                              check=True).stdout)


def test_ensemble_compute_counts_every_base_at_its_own_size_in_either_order(sized_bases, tmp_path):
    alone = {name: profile(sized_bases / name) for name in SIZES}
    assert [alone[n]["input_size"] for n in SIZES] == [list(s) for s in SIZES.values()]
    ensembles = {}
    for order in (("bts", "meter_xxs"), ("meter_xxs", "bts")):
        out = tmp_path / "_".join(order)
        run_cli("train-meta", "--inputs", "rgb+d", "--freeze", "--bases", ",".join(str(sized_bases / n) for n in order),
                "--out", out, *TINY, "--set", "meta.pretrained=false", check=True)
        ensembles[order] = profile(out)
        record = json.loads((out / "record.json").read_text())   # names each base's own input size
        assert [b["input_size"] for b in record["bases"]] == [list(SIZES[n]) for n in order]
    first, second = ensembles.values()
    assert first["input_size"] == second["input_size"] == [48, 64]   # the grid of the largest base
    assert first["gmacs"] == pytest.approx(second["gmacs"], rel=1e-6)
    assert first["gmacs"] > alone["bts"]["gmacs"] + alone["meter_xxs"]["gmacs"]
