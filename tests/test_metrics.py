"""NYU protocol metrics against values worked out by hand (ensemble_mde.metrics)."""

import math

import numpy as np
import pytest
import torch

from ensemble_mde.errors import DataError
from ensemble_mde.metrics import METRIC_KEYS, MetricAccumulator, depth_metrics, eigen_crop_mask, flip_tta


def _close(got: dict, want: dict, tol=1e-12):
    for key, value in want.items():
        assert abs(got[key] - value) <= tol * max(1.0, abs(value)), (key, got[key], value)


# gt = [[2, 4], [5, 1]], pred = [[2, 5], [4, 3]]
# ratios max(p/g, g/p) = 1, 1.25, 1.25, 3; the thresholds are strict, so 1.25 is not < 1.25.
# |p - g| = 0, 1, 1, 2; e = log p - log g = 0, ln 1.25, -ln 1.25, ln 3.
A, L3 = math.log(1.25), math.log(3.0)
GT_2x2 = [[2.0, 4.0], [5.0, 1.0]]
PRED_2x2 = [[2.0, 5.0], [4.0, 3.0]]
MEAN_E2 = (2 * A * A + L3 * L3) / 4
HAND_2x2 = {
    "d1": 1 / 4,                                   # only the exact pixel
    "d2": 3 / 4,                                   # 3 >= 1.5625
    "d3": 3 / 4,                                   # 3 >= 1.953125
    "abs_rel": (0 + 1 / 4 + 1 / 5 + 2 / 1) / 4,    # 0.6125
    "sq_rel": (0 + 1 / 4 + 1 / 5 + 4 / 1) / 4,     # 1.1125
    "rmse": math.sqrt((0 + 1 + 1 + 4) / 4),        # sqrt(1.5)
    "rmse_log": math.sqrt(MEAN_E2),
    "log10": (2 * math.log10(1.25) + math.log10(3.0)) / 4,
    "silog": 100 * math.sqrt(MEAN_E2 - (L3 / 4) ** 2),
}


def test_hand_computed_2x2_in_every_accepted_form():
    assert set(HAND_2x2) == set(METRIC_KEYS)
    forms = [
        (np.array(PRED_2x2), np.array(GT_2x2)),                                   # ndarray [H,W]
        (torch.tensor(PRED_2x2)[None], torch.tensor(GT_2x2)[None]),               # [1,H,W]
        (torch.tensor(PRED_2x2)[None, None], torch.tensor(GT_2x2)[None, None]),   # [1,1,H,W]
        (torch.tensor(PRED_2x2, dtype=torch.float32), np.array(GT_2x2, dtype=np.float32)),
    ]
    for pred, gt in forms:
        _close(depth_metrics(pred, gt), HAND_2x2)


def test_clip_rule():
    # pred 20 m vs gt 5 m is scored as 10 m: abs_rel 1, rmse 5; pred 0 becomes 1e-3.
    m = depth_metrics(np.array([[20.0]]), np.array([[5.0]]))
    _close(m, {"abs_rel": 1.0, "rmse": 5.0, "d1": 0.0, "log10": math.log10(2.0)})
    m = depth_metrics(np.array([[0.0]]), np.array([[1.0]]))
    _close(m, {"abs_rel": 1 - 1e-3, "log10": 3.0})
    # Non-finite predictions (AdaBins): +inf -> max_depth, NaN -> min_depth.
    m = depth_metrics(np.array([[np.inf, np.nan]]), np.array([[5.0, 1.0]]))
    _close(m, {"abs_rel": (1.0 + (1 - 1e-3)) / 2})


def test_mask_rule_ignores_zero_max_and_beyond():
    # Valid pixels are the 2x2 example; gt 0, 1e-3 (not >), 10 (not <) and 12 are ignored
    # although their predictions are far off.
    gt = np.array([[2.0, 4.0, 0.0, 10.0], [5.0, 1.0, 12.0, 1e-3]])
    pred = np.array([[2.0, 5.0, 9.0, 0.1], [4.0, 3.0, 0.2, 8.0]])
    _close(depth_metrics(pred, gt), HAND_2x2)


def test_eigen_crop_bounds_and_scaling():
    mask = eigen_crop_mask(480, 640)
    rows = mask.any(1).nonzero().flatten()
    cols = mask.any(0).nonzero().flatten()
    assert (rows[0].item(), rows[-1].item() + 1, cols[0].item(), cols[-1].item() + 1) == (45, 471, 41, 601)
    assert mask.sum().item() == 426 * 560
    half = eigen_crop_mask(240, 320)            # floor(45/2)=22 : floor(471/2)=235, 20 : 300
    assert half.sum().item() == (235 - 22) * (300 - 20) and half[22, 20] and not half[21, 20]


def test_eigen_crop_ignores_errors_outside_the_crop():
    gt = torch.full((480, 640), 2.0)
    pred = torch.full((480, 640), 9.0)              # 7 m off outside the crop ...
    pred[45:471, 41:601] = 2.0                      # ... exact inside
    cropped = depth_metrics(pred, gt, eigen_crop=True)
    _close(cropped, {"rmse": 0.0, "abs_rel": 0.0, "d1": 1.0, "silog": 0.0})
    outside = 480 * 640 - 426 * 560
    full = depth_metrics(pred, gt)
    _close(full, {"rmse": math.sqrt(49 * outside / (480 * 640)), "d1": 1 - outside / (480 * 640)})


def test_smaller_prediction_is_upsampled_bilinearly_without_aligned_corners():
    # 1x2 [1, 3] -> 1x4 samples source x = -0.25, 0.25, 0.75, 1.25 (clamped to 0 and 1):
    # [1, 1.5, 2.5, 3]. Against gt 2: errors -1, -0.5, 0.5, 1 -> rmse sqrt(2.5 / 4).
    m = depth_metrics(np.array([[1.0, 3.0]]), np.full((1, 4), 2.0))
    _close(m, {"rmse": math.sqrt(0.625), "abs_rel": 0.375})


def test_no_valid_pixel_raises_naming_the_image():
    with pytest.raises(DataError, match="kitchen_0001"):
        depth_metrics(np.ones((2, 2)), np.zeros((2, 2)), name="kitchen_0001")
    with pytest.raises(DataError, match="Eigen crop"):   # valid pixels only outside the crop
        gt = np.zeros((480, 640))
        gt[0, 0] = 3.0
        depth_metrics(gt, gt, eigen_crop=True)


def test_accumulator_means_over_images_whatever_the_batching():
    # Image a: perfect (rmse 0) on 4 valid pixels; image b: 1 valid pixel off by 2 (rmse 2).
    # Mean over images = 1 (pooling the 5 pixels would give sqrt(4/5)).
    gt = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[5.0, 0.0], [0.0, 0.0]]]])
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[7.0, 1.0], [1.0, 1.0]]]])

    batched = MetricAccumulator()
    batched.update(pred, gt, name=["a", "b"])
    single = MetricAccumulator()
    single.update(pred[0], gt[0], name="a")
    single.update(pred[1, 0].numpy(), gt[1, 0].numpy(), name="b")

    assert batched.compute() == single.compute()
    result = batched.compute()
    assert result["n_images"] == 2 and len(batched) == 2
    _close(result, {"rmse": 1.0, "abs_rel": (0 + 2 / 5) / 2, "d1": 0.5})
    assert [r["name"] for r in batched.per_image] == ["a", "b"]
    _close(batched.per_image[1], {"rmse": 2.0, "abs_rel": 0.4})


def test_accumulator_errors_and_default_names():
    acc = MetricAccumulator(max_depth=10.0, eigen_crop=False)
    with pytest.raises(DataError):
        acc.compute()
    with pytest.raises(DataError):
        acc.update(torch.ones(2, 1, 2, 2), torch.ones(3, 1, 2, 2))
    acc.update(torch.ones(2, 1, 2, 2), torch.full((2, 1, 2, 2), 2.0))
    assert [r["name"] for r in acc.per_image] == ["image_0", "image_1"]


def test_flip_tta_on_an_asymmetric_function():
    # predict = running sum from the left of channel 0. Mirrored image -> running sum from
    # the right once mirrored back. Row [1, 2, 3]: prefix [1, 3, 6], suffix [6, 5, 3],
    # average [3.5, 4, 4.5].
    def predict(rgb):
        return torch.cumsum(rgb[:, :1], dim=-1)

    rgb = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 3).expand(2, 3, 2, 3)
    out = flip_tta(predict, rgb)
    assert out.shape == (2, 1, 2, 3)
    assert torch.equal(out, torch.tensor([3.5, 4.0, 4.5]).expand(2, 1, 2, 3))
