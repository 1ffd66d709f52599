"""ensemble_mde.profiling: params, mult-adds by hand formula, latency, mode restoring."""

import pytest
from torch import nn

from ensemble_mde.profiling import count_gmacs, count_params, measure_latency, profile_model


def test_count_params_of_a_conv():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_params(conv) == 8 * 3 * 3 * 3 + 8


@pytest.mark.parametrize("stride, out_hw", [(1, (10, 12)), (2, (5, 6))])
def test_count_gmacs_of_a_conv_matches_hand_formula(stride, out_hw):
    conv = nn.Conv2d(3, 8, 3, stride=stride, padding=1)
    batch = 2
    # one multiply-add per output element, input channel and kernel tap
    macs = batch * out_hw[0] * out_hw[1] * 8 * 3 * 3 * 3
    assert count_gmacs(conv, size=(10, 12), batch=batch) == pytest.approx(macs / 1e9, rel=1e-12)


def test_count_gmacs_of_a_depthwise_separable_conv():
    sep = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False), nn.Conv2d(3, 32, 1, bias=False))
    # depthwise: one 3x3 filter per input channel; pointwise: 3 -> 32
    macs = 8 * 8 * (3 * 9 + 3 * 32)
    assert count_gmacs(sep, size=(8, 8)) == pytest.approx(macs / 1e9, rel=1e-12)


def test_measuring_restores_training_mode_and_reports_fps():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    model.train()
    result = measure_latency(model, size=(8, 8), batch=3, device="cpu", warmup=1, repeats=3)
    assert model.training
    assert result["latency_ms"] > 0
    assert result["fps"] == pytest.approx(3 * 1000.0 / result["latency_ms"])
    model.eval()
    count_gmacs(model, size=(8, 8))
    assert not model.training


def test_profile_model_reports_all_figures():
    conv = nn.Conv2d(3, 8, 1, bias=False)
    result = profile_model(conv, size=(4, 5), batch=1, device="cpu", repeats=2)
    assert set(result) == {"params", "gmacs", "latency_ms", "fps"}
    assert result["params"] == 24
    assert result["gmacs"] == pytest.approx(4 * 5 * 24 / 1e9, rel=1e-12)
    assert result["latency_ms"] > 0 and result["fps"] > 0


def test_profile_cli_counts_the_meta_variants_and_learners_as_configured(capsys):
    """`ensemble profile meta --set ...` builds the variant the override names (the study's
    sizes at 416x544 are checked in test_meta_learner.py; here the CLI path, at a small size)."""
    import json

    from ensemble_mde.cli import main

    def profile(*args):
        with pytest.raises(SystemExit) as done:
            main(["profile", *args, "--size", "64x96", "--repeats", "1", "--device", "cpu", "--json"])
        assert done.value.code == 0
        return json.loads(capsys.readouterr().out)["params"]

    assert profile("meta") == 4_266_678
    assert profile("meta", "--set", "meta.inputs=rgb") == 4_266_246
    assert profile("meta", "--set", "meta.encoder=mobilenetv2_100") == 3_702_458
    assert profile("meta", "--set", "meta.head=relaxed") == 4_266_678 + 4
    assert profile("bts") == 8_900_728
