"""Depth selectivity: bins, responses, the selectivity index, the regulariser and the
streaming dissection, on feature maps built by hand."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ensemble_mde.errors import ModelError
from ensemble_mde.selectivity import (
    LayerHooks,
    SelectivityDissection,
    bin_responses,
    bins_for_channels,
    depth_bin_index,
    depth_bin_thresholds,
    selectivity_index,
    selectivity_regularizer,
)


def bin_centres(n_bins: int) -> torch.Tensor:
    t = depth_bin_thresholds(n_bins)
    return ((t[:-1] + t[1:]) / 2).float()


def striped_gt(n_bins: int, height: int = 6, width_per_bin: int = 3, bins=None) -> torch.Tensor:
    """[1,1,H,W] GT whose column stripes lie in the given bins (default: all), one stripe each."""
    bins = range(n_bins) if bins is None else bins
    centres = bin_centres(n_bins)
    row = torch.cat([centres[d].repeat(width_per_bin) for d in bins])
    return row.expand(height, -1).reshape(1, 1, height, -1).clone()


def one_hot_features(gt: torch.Tensor, n_bins: int, channels: int) -> torch.Tensor:
    """Unit k fires (value 2) exactly on the pixels of bin k·n_bins/channels, else 0."""
    bins = depth_bin_index(gt, depth_bin_thresholds(n_bins))
    own = torch.arange(channels) * n_bins // channels
    return 2.0 * (bins == own.view(1, -1, 1, 1)).float()


def test_thresholds_for_64_channels_follow_the_formula():
    assert bins_for_channels(160) == 64 and bins_for_channels(32) == 32
    t = depth_bin_thresholds(bins_for_channels(64))
    assert t.shape == (65,)
    assert t[0] == 0 and t[1] == 0.75 and t[-1] == 10.0
    # t_i = exp(ln(beta + 1 - alpha) * i / (N_b - 1)) - (1 - alpha), i = 1 .. N_b - 2
    assert t[2].item() == pytest.approx(10.25 ** (1 / 63) - 0.25, abs=1e-12)
    assert t[2].item() == pytest.approx(0.7876317115551439, abs=1e-12)
    assert t[33].item() == pytest.approx(10.25 ** (32 / 63) - 0.25, abs=1e-12)
    assert t[63].item() == pytest.approx(10.25 ** (62 / 63) - 0.25, abs=1e-12)
    assert torch.all(t[1:] > t[:-1])
    small = depth_bin_thresholds(4)
    expected = [0.0, 0.75, 10.25 ** (1 / 3) - 0.25, 10.25 ** (2 / 3) - 0.25, 10.0]
    assert small.tolist() == pytest.approx(expected, abs=1e-12)


def test_bin_index_edges_and_invalid_depth():
    t = depth_bin_thresholds(4)  # 0, 0.75, 1.922, 4.469, 10
    gt = torch.tensor([0.0, -1.0, 0.5, 0.75, 0.76, 2.0, 10.0, 10.5, float("nan")])
    assert depth_bin_index(gt, t).tolist() == [-1, -1, 0, 0, 1, 2, 3, -1, -1]


def test_bin_responses_sum_features_per_bin():
    gt = torch.tensor([[[[0.5, 0.5, 2.0, 0.0]]]])  # bins 0, 0, 2, none
    bins = depth_bin_index(gt, depth_bin_thresholds(4))
    feats = torch.tensor([[[[1.0, 2.0, 3.0, 100.0]], [[0.0, 1.0, 0.0, 7.0]]]])  # [1,2,1,4]
    sums, counts = bin_responses(feats, bins, 4)
    assert counts.tolist() == [2, 0, 1, 0]
    assert sums.tolist() == [[3.0, 0.0, 3.0, 0.0], [1.0, 0.0, 0.0, 0.0]]


def test_units_tuned_to_their_own_bin_have_selectivity_one():
    n_bins = channels = 8
    gt = striped_gt(n_bins)
    feats = one_hot_features(gt, n_bins, channels)
    term, per_layer = selectivity_regularizer({"layer": feats}, gt, alpha=-0.1)
    assert per_layer["layer"].item() == pytest.approx(1.0, abs=1e-6)
    assert term.item() == pytest.approx(-0.1, abs=1e-6)
    dissect = SelectivityDissection()
    dissect.update({"layer": feats}, gt)
    assert torch.allclose(dissect.result()["layer"], torch.ones(channels, dtype=torch.float64), atol=1e-9)
    assert dissect.preferred_bins()["layer"].tolist() == list(range(channels))


def test_depth_independent_units_have_selectivity_zero():
    n_bins = channels = 8
    gt = striped_gt(n_bins, height=64, width_per_bin=16)
    constant = torch.arange(1, channels + 1).float().view(1, -1, 1, 1).expand(1, channels, 64, 128)
    _, per_layer = selectivity_regularizer({"c": constant}, gt)
    assert per_layer["c"].item() == pytest.approx(0.0, abs=1e-6)
    noise = torch.rand(1, channels, 64, 128, generator=torch.Generator().manual_seed(0)) + 0.5
    dissect = SelectivityDissection()
    dissect.update({"noise": noise}, gt)
    s = dissect.result()["noise"]
    assert s.shape == (channels,) and torch.all(s.abs() < 0.05)


def test_unit_whose_bin_is_absent_counts_zero():
    n_bins = channels = 4
    gt = striped_gt(n_bins, bins=[0, 1])  # bins 2 and 3 absent from the batch
    feats = one_hot_features(gt, n_bins, channels)
    _, per_layer = selectivity_regularizer({"l": feats}, gt)
    assert per_layer["l"].item() == pytest.approx((1 + 1 + 0 + 0) / 4, abs=1e-6)


def test_selectivity_index_by_hand():
    r = torch.tensor([[4.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 3.0, 1.0]])
    # unit 0: (4 - 1) / (4 + 1); unit 1: 0; unit 2 (a = argmax = 1): (3 - 0.5) / (3 + 0.5)
    assert selectivity_index(r).tolist() == pytest.approx([0.6, 0.0, 2.5 / 3.5])
    fixed = selectivity_index(r, torch.tensor([1, 1, 0]))  # unit 2 tuned to bin 0: (0 - 2) / (0 + 2)
    assert fixed.tolist() == pytest.approx([(1 - 2.5) / 3.5, 0.0, -1.0])
    present = torch.tensor([True, False, True])  # bin 1 absent: the mean skips it
    assert selectivity_index(r, None, present).tolist() == pytest.approx([0.6, 0.0, 1.0])


class TwoConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 4, 3, stride=2, padding=1)

    def forward(self, x):
        return {"depth": self.conv_b(torch.relu(self.conv_a(x)))}

    def selectable_layers(self):
        return OrderedDict(a=self.conv_a, b=self.conv_b)


def test_regulariser_gradient_reaches_the_hooked_layer():
    torch.manual_seed(0)
    net = TwoConvNet()
    gt = striped_gt(8, height=16, width_per_bin=2)
    with LayerHooks(net, ["b"]) as hooks:
        net(torch.rand(1, 3, 16, 16))
        assert list(hooks.outputs) == ["b"] and hooks.outputs["b"].shape == (1, 4, 8, 8)
        term, per_layer = selectivity_regularizer(hooks.outputs, gt, alpha=-0.5)
        term.backward()
    assert term.item() == pytest.approx(-0.5 * per_layer["b"].item())
    assert net.conv_b.weight.grad is not None and net.conv_b.weight.grad.abs().sum() > 0
    assert net.conv_a.weight.grad.abs().sum() > 0  # flows on through the layer's input
    net.zero_grad()
    with LayerHooks(net, ["a"]) as hooks:
        net(torch.rand(1, 3, 16, 16))
        stored = dict(hooks.outputs)
    assert list(stored) == ["a"] and not hooks.outputs  # hooks removed and outputs dropped on exit
    net(torch.rand(1, 3, 16, 16))
    assert not hooks.outputs
    with pytest.raises(ModelError, match="did you mean 'a'"):
        LayerHooks(net, ["aa"])


def test_streaming_dissection_equals_one_pass_over_all_pixels():
    gen = torch.Generator().manual_seed(1)
    channels, n_bins = 6, 6
    feats = torch.randn(6, channels, 5, 7, generator=gen)
    gt = torch.rand(6, 1, 10, 14, generator=gen) * 11.0  # some > 10 m: no bin
    gt[:, :, :2] = 0.0  # holes
    dissect = SelectivityDissection()
    for i in range(0, 6, 2):
        dissect.update({"l": feats[i:i + 2]}, gt[i:i + 2])

    # one pass: every pixel of every image at once, then the formula written out unit by unit
    up = F.interpolate(feats, size=(10, 14), mode="bilinear", align_corners=False)
    bins = depth_bin_index(gt, depth_bin_thresholds(n_bins))
    pix = up.permute(1, 0, 2, 3).reshape(channels, -1).double()
    flat = bins.reshape(-1)
    present = [d for d in range(n_bins) if (flat == d).any()]
    mean = torch.zeros(channels, n_bins, dtype=torch.float64)
    for d in present:
        mean[:, d] = pix[:, flat == d].mean(dim=1)
    assert torch.allclose(dissect.mean_responses()["l"], mean, atol=1e-6)
    expected = []
    for k in range(channels):
        r = mean[k].abs()
        a = max(present, key=lambda d: r[d].item())
        rest = sum(r[d] for d in present if d != a) / (len(present) - 1)
        expected.append(((r[a] - rest) / (r[a] + rest)).item())
    assert dissect.result()["l"].tolist() == pytest.approx(expected, abs=1e-6)
    assert dissect.counts["l"].sum().item() == (flat >= 0).sum().item()


class SumOfUnits(nn.Module):
    """depth = sum over the 4 channels of `units`, whose channel k is the constant V[k]."""

    V = (1.0, 1.5, 0.5, 1.0)

    def __init__(self):
        super().__init__()
        self.units = nn.Conv2d(3, 4, 1)
        nn.init.zeros_(self.units.weight)
        self.units.bias.data = torch.tensor(self.V)

    def forward(self, rgb):
        return {"depth": self.units(rgb).sum(dim=1, keepdim=True)}

    def selectable_layers(self):
        return OrderedDict(units=self.units)


def test_ablation_curve_zeroes_the_ordered_units():
    from ensemble_mde.selectivity import ablation_curve

    dataset = [{"rgb": torch.rand(3, 8, 8), "depth": torch.full((1, 8, 8), 4.0), "name": f"s{i}"} for i in range(2)]
    curve = ablation_curve(SumOfUnits(), dataset, "units", [1, 0, 3, 2], [0, 1, 2, 4], random_repeats=2)
    # zeroing units removes their constant from the prediction: RMSE = the sum of the removed values
    assert curve["k"] == [0, 1, 2, 4]
    assert curve["top_rmse"] == pytest.approx([0.0, 1.5, 2.5, 4.0 - 1e-3], abs=1e-5)  # prediction clipped at 1e-3
    assert curve["random_rmse"][0] == pytest.approx(0.0, abs=1e-6)
    assert curve["random_rmse"][-1] == pytest.approx(4.0 - 1e-3, abs=1e-5)
    assert 0.5 <= curve["random_rmse"][1] <= 1.5
    with pytest.raises(ModelError, match="4 channels but the unit order names 3"):
        ablation_curve(SumOfUnits(), dataset, "units", [0, 1, 2], [1])


class PaddingNet(nn.Module):
    """Pads its input (bottom/right, replicate) to a multiple of 8 and exposes the padded
    RGB itself as the hooked layer's output, like a learner whose maps cover the padding."""

    input_multiple = 8

    def __init__(self):
        super().__init__()
        self.features = nn.Identity()

    def forward(self, rgb):
        from base_learners.common import pad_to_multiple

        padded, (h, w) = pad_to_multiple(rgb, self.input_multiple)
        return {"depth": self.features(padded)[:, :1, :h, :w]}

    def selectable_layers(self):
        return OrderedDict(features=self.features)


def test_padding_the_learner_adds_is_left_out_of_the_responses():
    gen = torch.Generator().manual_seed(2)
    rgb = torch.rand(2, 3, 12, 10, generator=gen) + 0.1
    gt = torch.rand(2, 1, 12, 10, generator=gen) * 9.0 + 0.5
    net = PaddingNet()
    padded_map = F.pad(rgb, (0, 6, 0, 4), mode="replicate")  # 12x10 -> 16x16
    with LayerHooks(net, ["features"]) as hooks:
        net(rgb)
        assert torch.equal(hooks.outputs["features"], padded_map)
        assert hooks.outputs.extent == (12 / 16, 10 / 16)
        padded = SelectivityDissection()
        padded.update(hooks.outputs, gt)
        _, regularised = selectivity_regularizer(hooks.outputs, gt)
    direct = SelectivityDissection()  # the same features without the padding
    direct.update({"features": rgb}, gt)
    assert torch.allclose(padded.mean_responses()["features"], direct.mean_responses()["features"], atol=1e-6)
    _, expected = selectivity_regularizer({"features": rgb}, gt)
    assert regularised["features"].item() == pytest.approx(expected["features"].item(), abs=1e-6)
    squeezed = SelectivityDissection()  # ignoring the extent would squeeze the padded map onto the image
    squeezed.update({"features": padded_map}, gt)
    assert not torch.allclose(squeezed.mean_responses()["features"], direct.mean_responses()["features"], atol=1e-3)


def test_dissect_dataset_streams_resized_rgb_against_native_gt():
    from ensemble_mde.selectivity import dissect_dataset, layer_statistics

    gen = torch.Generator().manual_seed(3)
    dataset = [{"rgb": torch.rand(3, 12, 10, generator=gen), "depth": torch.rand(1, 6, 5, generator=gen) * 9 + 0.5,
                "name": f"s{i}"} for i in range(3)]
    net = PaddingNet()
    dissection = dissect_dataset(net, dataset, ["features"], input_size=(24, 20), batch_size=2)
    by_hand = SelectivityDissection()
    for sample in dataset:  # model input 24x20 (padded to 24x24 inside), GT 6x5
        rgb = F.interpolate(sample["rgb"][None], size=(24, 20), mode="bilinear", align_corners=False)
        by_hand.update({"features": rgb}, sample["depth"][None])
    assert torch.allclose(dissection.sums["features"], by_hand.sums["features"], atol=1e-5)
    assert dissection.counts["features"].sum().item() == 3 * 6 * 5

    s = dissection.result()["features"]
    (row,) = layer_statistics(dissection, threshold=float(s.median()))
    assert row["layer"] == "features" and row["units"] == 3 and row["bins"] == 3
    assert row["bins_seen"] == int((dissection.counts["features"] > 0).sum())
    assert row["mean"] == pytest.approx(s.mean().item()) and row["median"] == pytest.approx(s.median().item())
    assert row["std"] == pytest.approx(s.std(unbiased=False).item())
    assert row["frac_above"] == pytest.approx((s > s.median()).double().mean().item())


def test_ablation_scores_each_distinct_unit_set_once():
    from ensemble_mde.selectivity import ablation_curve

    dataset = [{"rgb": torch.rand(3, 8, 8), "depth": torch.full((1, 8, 8), 4.0), "name": "s0"}]
    calls = []
    curve = ablation_curve(SumOfUnits(), dataset, "units", [1, 0, 3, 2], [0, 4], random_repeats=3,
                           progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]  # k = 0 and k = K zero the same units in every curve
    assert curve["top_rmse"] == curve["random_rmse"]
