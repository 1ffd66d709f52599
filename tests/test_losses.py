"""Losses against hand computations and brute force (ensemble_mde.losses)."""

import math

import torch

from ensemble_mde.losses import balanced_loss, bin_chamfer_loss, silog_loss, sobel_gradients, ssim_map


def _bchw(rows):
    return torch.tensor(rows, dtype=torch.float32).view(1, 1, len(rows), len(rows[0]))


# ---------------------------------------------------------------- SILog

def test_silog_matches_hand_computation_pooled_over_the_batch():
    # gt = 1 everywhere; pred = e, 1/e | e^2, 1 on the valid pixels -> d = [1, -1, 2, 0].
    # Pooled over the batch (BTS): mean d^2 = 6/4 = 1.5, mean d = 0.5,
    # loss = 10 * sqrt(1.5 - 0.85 * 0.25) = 10 * sqrt(1.2875).
    e = math.e
    pred = torch.tensor([[[[e, 1 / e, 99.0]]], [[[e * e, 1.0, 99.0]]]])
    gt = torch.tensor([[[[1.0, 1.0, 0.0]]], [[[1.0, 1.0, 0.0]]]])     # last column: invalid GT
    mask = gt > 0
    loss = silog_loss(pred, gt, mask)
    assert abs(loss.item() - 10 * math.sqrt(1.2875)) < 1e-5
    # Per-image averaging would give 10 * (sqrt(1) + sqrt(2 - 0.85)) / 2 instead.
    assert abs(loss.item() - 5 * (1 + math.sqrt(1.15))) > 0.1


def test_silog_is_zero_with_finite_gradient_at_a_perfect_prediction():
    gt = torch.rand(2, 1, 5, 6) * 8 + 1
    pred = gt.clone().requires_grad_()
    loss = silog_loss(pred, gt, gt > 0)
    loss.backward()
    assert loss.item() < 1e-4
    assert torch.isfinite(pred.grad).all()


def test_silog_scale_invariance_part_and_guards():
    gt = torch.rand(1, 1, 4, 4) * 5 + 1
    mask = torch.ones_like(gt, dtype=torch.bool)
    # A global scale s gives d = log s everywhere: 10 * sqrt((1 - 0.85) log(s)^2).
    assert abs(silog_loss(2 * gt, gt, mask).item() - 10 * math.sqrt(0.15) * math.log(2)) < 1e-4
    # Non-positive predictions are clamped before the log: finite loss and gradient.
    pred = torch.zeros_like(gt).requires_grad_()
    loss = silog_loss(pred, gt, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    # No valid pixel: zero, still differentiable.
    pred = gt.clone().requires_grad_()
    empty = silog_loss(pred, gt, torch.zeros_like(mask))
    empty.backward()
    assert empty.item() == 0.0


def test_silog_ignores_invalid_pixels_whatever_they_hold():
    # Invalid GT (0, NaN) and whatever the prediction holds there (NaN included) change
    # neither the loss nor any gradient; those pixels get a zero gradient.
    gt = torch.rand(2, 1, 6, 7) * 8 + 1
    pred = (gt * (0.8 + 0.4 * torch.rand_like(gt))).requires_grad_()
    mask = torch.ones_like(gt, dtype=torch.bool)
    mask[0, 0, :2] = False
    mask[1, 0, :, 3] = False
    reference = silog_loss(pred[mask].view(1, 1, 1, -1), gt[mask].view(1, 1, 1, -1),
                           torch.ones(1, 1, 1, int(mask.sum()), dtype=torch.bool))
    (ref_grad,) = torch.autograd.grad(reference, pred)

    dirty_gt = gt.clone()
    dirty_gt[0, 0, 0] = 0.0
    dirty_gt[1, 0, :, 3] = float("nan")
    dirty_pred = pred.detach().clone()
    dirty_pred[0, 0, 1] = float("nan")
    dirty_pred = dirty_pred.requires_grad_()
    loss = silog_loss(dirty_pred, dirty_gt, mask)
    loss.backward()
    assert abs(loss.item() - reference.item()) < 1e-5
    assert torch.isfinite(dirty_pred.grad).all()
    assert (dirty_pred.grad[~mask] == 0).all()
    assert torch.allclose(dirty_pred.grad[mask], ref_grad[mask], atol=1e-7)


# ---------------------------------------------------------------- bin chamfer

def _chamfer_brute_force(centers, gt, mask):
    """pytorch3d chamfer_distance defaults (as AdaBins calls it), with the full N x M matrix."""
    per_image = []
    for c, g, m in zip(centers, gt, mask):
        points = g[m]
        if points.numel() == 0:
            continue
        d = (c[:, None] - points[None, :]) ** 2
        per_image.append(d.min(1).values.mean() + d.min(0).values.mean())
    return torch.stack(per_image).mean()


def test_chamfer_hand_example():
    # centres {1, 3}, GT {1, 2, 4}: centres -> GT: 0, 1 (3 to 2 or 4): mean 1/2;
    # GT -> centres: 0, 1, 1: mean 2/3; total 7/6.
    centers = torch.tensor([[3.0, 1.0]])
    gt = torch.tensor([[[[1.0, 2.0], [4.0, 0.0]]]])
    assert abs(bin_chamfer_loss(centers, gt, gt > 0).item() - 7 / 6) < 1e-6


def test_chamfer_equals_brute_force_with_ragged_valid_counts_and_gradients():
    torch.manual_seed(0)
    b, n = 4, 16
    gt = torch.rand(b, 1, 9, 11) * 9.5 + 0.2
    gt[0, :, :3] = 0.0                       # holes
    gt[1] = torch.where(torch.rand_like(gt[1]) < 0.8, torch.zeros_like(gt[1]), gt[1])
    gt[2, 0, 0, :5] = 7.5                    # ties in GT
    gt[3] = 0.0                              # no valid pixel: left out of the average
    mask = (gt > 1e-3) & (gt < 10)
    base = torch.rand(b, n) * 12 - 1         # some centres outside the GT range
    base[0, :3] = 7.5                        # ties among centres

    ours_in = base.clone().requires_grad_()
    ours = bin_chamfer_loss(ours_in, gt, mask)
    ours.backward()
    ref_in = base.clone().requires_grad_()
    ref = _chamfer_brute_force(ref_in, gt, mask)
    ref.backward()

    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert ours_in.grad.abs().sum() > 0
    # Tied centres share their pull in any split (either is a nearest neighbour): compare the
    # tie group's total, and every other centre one by one.
    assert torch.allclose(ours_in.grad[0, :3].sum(), ref_in.grad[0, :3].sum(), rtol=1e-4, atol=1e-6)
    assert torch.allclose(ours_in.grad[0, 3:], ref_in.grad[0, 3:], rtol=1e-4, atol=1e-6)
    assert torch.allclose(ours_in.grad[1:], ref_in.grad[1:], rtol=1e-4, atol=1e-6)
    assert torch.all(ours_in.grad[3] == 0)


def test_chamfer_without_valid_gt_is_a_differentiable_zero():
    centers = torch.rand(2, 8).requires_grad_()
    gt = torch.zeros(2, 1, 4, 4)
    loss = bin_chamfer_loss(centers, gt, gt > 0)
    loss.backward()
    assert loss.item() == 0.0 and centers.grad is not None


# ---------------------------------------------------------------- balanced (METER)

def test_sobel_of_a_ramp():
    ramp = torch.arange(6.0).repeat(5, 1).view(1, 1, 5, 6)           # z = column index
    gx, gy = sobel_gradients(ramp)
    assert torch.all(gx[..., 1:-1] == 8)       # (1 + 2 + 1) * (x+1 - (x-1)) in the interior
    assert torch.all(gx[..., 0] == 4) and torch.all(gx[..., -1] == 4)   # replicate padding
    assert torch.all(gy == 0)


def _reference_ssim_valid(a, b, data_range):
    """Textbook SSIM map on the 'valid' region (no padding), 11x11 Gaussian sigma 1.5."""
    g = torch.tensor([math.exp(-((x - 5) ** 2) / (2 * 1.5 ** 2)) for x in range(11)], dtype=a.dtype)
    g = g / g.sum()
    w = (g[:, None] @ g[None, :]).view(1, 1, 11, 11)
    mu_a, mu_b = torch.conv2d(a, w), torch.conv2d(b, w)
    var_a = torch.conv2d(a * a, w) - mu_a ** 2
    var_b = torch.conv2d(b * b, w) - mu_b ** 2
    cov = torch.conv2d(a * b, w) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def test_ssim_identical_is_one_and_interior_matches_textbook_ssim():
    torch.manual_seed(1)
    a = torch.rand(2, 1, 20, 24, dtype=torch.float64) * 9 + 0.5
    b = a + 0.5 * torch.randn_like(a)
    assert torch.allclose(ssim_map(a, a, 10.0), torch.ones_like(a), atol=1e-10)
    holes = torch.rand_like(a) > 0.3
    assert torch.allclose(ssim_map(a, a, 10.0, mask=holes), torch.ones_like(a), atol=1e-10)
    ours = ssim_map(a, b, 10.0)[..., 5:-5, 5:-5]
    assert torch.allclose(ours, _reference_ssim_valid(a, b, 10.0), atol=1e-10)
    assert ours.mean() < 0.99


def test_balanced_loss_vanishes_for_identical_maps_even_with_garbage_in_holes():
    torch.manual_seed(2)
    gt = torch.rand(2, 1, 16, 20) * 8 + 1
    gt[:, :, 5:8, 6:9] = 0.0                                    # a hole in the GT
    pred = torch.where(gt > 0, gt, torch.full_like(gt, 50.0))   # garbage where GT is missing
    terms = balanced_loss(pred, gt, (gt > 1e-3) & (gt < 10), max_depth=10.0)
    assert set(terms) == {"l1", "gradient", "normal", "ssim", "total"}
    for key in ("l1", "gradient", "normal", "ssim", "total"):
        assert abs(terms[key].item()) < 1e-5, key


def test_balanced_loss_hand_computation_on_a_ramp():
    # gt = 5 (all valid); pred = 5 + 0.1 * column, 6 columns.
    gt = torch.full((1, 1, 4, 6), 5.0)
    pred = gt + 0.1 * torch.arange(6.0)
    terms = balanced_loss(pred, gt, gt > 0)
    # L1: mean of 0.1 * (0..5) = 0.25.
    assert abs(terms["l1"].item() - 0.25) < 1e-6
    # Sobel gx of pred: 0.8 inside, 0.4 on the two border columns (replicate padding); gy = 0.
    # Every pixel's in-image 3x3 neighbourhood is valid: gradient = (2*0.4 + 4*0.8)/6.
    assert abs(terms["gradient"].item() - 4.0 / 6) < 1e-6
    # Normals [-gx, 0, 1] vs [0, 0, 1]: 1 - cos = 1 - 1/sqrt(1 + gx^2).
    normal = (2 * (1 - 1 / math.sqrt(1.16)) + 4 * (1 - 1 / math.sqrt(1.64))) / 6
    assert abs(terms["normal"].item() - normal) < 1e-6
    assert terms["ssim"].item() > 0
    total = terms["l1"] + 0.5 * terms["gradient"] + terms["normal"] + terms["ssim"]
    assert abs(terms["total"].item() - total.item()) < 1e-6


def test_balanced_loss_masked_l1_and_positive_terms_with_gradients():
    gt = _bchw([[2.0, 4.0, 0.0], [3.0, 12.0, 5.0]])           # 0 and 12 m are invalid
    pred = _bchw([[2.5, 3.0, 9.0], [3.0, 1.0, 5.5]])
    # L1 over the 4 valid pixels: (0.5 + 1 + 0 + 0.5) / 4 = 0.5.
    assert abs(balanced_loss(pred, gt, (gt > 1e-3) & (gt < 10))["l1"].item() - 0.5) < 1e-6

    torch.manual_seed(3)
    gt = torch.rand(2, 1, 16, 20) * 8 + 1
    pred = (gt + 0.7 * torch.randn_like(gt)).requires_grad_()
    terms = balanced_loss(pred, gt, gt > 0)
    for key in ("l1", "gradient", "normal", "ssim"):
        assert terms[key].item() > 0, key
    terms["total"].backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
