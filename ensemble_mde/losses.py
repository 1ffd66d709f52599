"""Training losses, masked to valid ground truth. Depth in metres.

Shapes: pred, gt [B,1,H,W]; mask bool [B,1,H,W] (True = valid GT); bin_centers [B,N].

- `silog_loss`: BTS/AdaBins scale-invariant log loss.
- `bin_chamfer_loss`: AdaBins' bidirectional chamfer between bin centres and GT depths,
  exact in 1-D with sort + searchsorted (no N x M distance matrix).
- `balanced_loss`: METER's L1 + gradient + normal + SSIM loss (Papa et al. 2023).

Every loss returns a zero that still depends on its input (so `backward()` works) when the
batch holds no valid pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOG_EPS = 1e-6          # metres: predictions are clamped to this before the log
SQRT_EPS = 1e-12        # floor under the SILog variance before sqrt (gradient of sqrt at 0)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _zero_like_graph(x: torch.Tensor) -> torch.Tensor:
    """A scalar 0 connected to x's graph."""
    return x.sum() * 0.0


def silog_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, variance_focus: float = 0.85,
               scale: float = 10.0, eps: float = LOG_EPS) -> torch.Tensor:
    """Scale-invariant log loss over the batch's valid pixels (as BTS `silog_loss`):

    d = log(pred) - log(gt);  scale * sqrt(mean(d^2) - variance_focus * mean(d)^2).

    pred is clamped to >= eps before the log; the radicand is floored at 1e-12 so the loss
    and its gradient stay finite when pred equals gt. The means are masked sums over the
    whole map, not sums over `pred[mask]`: boolean indexing (nonzero, gather, and a scatter in
    the backward) took a tenth of the meta-learner's training step on CPU.
    """
    count = mask.sum()
    if not bool(count):
        return _zero_like_graph(pred)
    # invalid pixels read pred = gt = 1, so d = 0 there and no gradient reaches them
    d = torch.log(torch.where(mask, pred.float(), 1.0).clamp_min(eps)) - torch.log(torch.where(mask, gt.float(), 1.0))
    mean_d = d.sum() / count
    radicand = (d * d).sum() / count - variance_focus * mean_d ** 2
    return scale * torch.sqrt(radicand.clamp_min(SQRT_EPS))


def _nearest_sq_dist(sorted_ref: torch.Tensor, ref_len: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Squared distance from each query to its nearest reference value, in 1-D.

    sorted_ref [B,R] ascending in its first ref_len[b] entries (the rest is padding, never
    read); ref_len [B] >= 1; query [B,Q]. Returns [B,Q]. The nearest neighbour of q is one of
    the two sorted values around searchsorted's insertion point.
    """
    idx = torch.searchsorted(sorted_ref.detach().contiguous(), query.detach().contiguous())
    last = (ref_len - 1).unsqueeze(1)
    hi = torch.minimum(idx, last)
    lo = torch.minimum(torch.clamp(idx - 1, min=0), last)
    d_hi = (query - sorted_ref.gather(1, hi)) ** 2
    d_lo = (query - sorted_ref.gather(1, lo)) ** 2
    return torch.minimum(d_hi, d_lo)


def bin_chamfer_loss(bin_centers: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """AdaBins' bin-centre chamfer loss, computed exactly in 1-D.

    AdaBins calls pytorch3d `chamfer_distance(centres [B,N,1], valid GT [B,M_b,1],
    y_lengths=M_b)` with its defaults (squared distances, point_reduction="mean",
    batch_reduction="mean"), i.e. per image
        mean_i min_j (c_i - g_j)^2  +  mean_j min_i (g_j - c_i)^2
    averaged over the images. Same here, with the nearest neighbour found by sorting one side
    and `searchsorted` for the other: O((N + M) log) per image, no N x M matrix.
    AdaBins keeps GT >= 1e-3; here the caller's mask decides. Images without a valid pixel
    are left out of the average (pytorch3d has no meaningful value for them).

    bin_centers [B,N] metres, gt [B,1,H,W], mask [B,1,H,W] bool -> scalar.
    """
    b = bin_centers.shape[0]
    centers = bin_centers.float()
    points = gt.reshape(b, -1).float()
    valid = mask.reshape(b, -1)
    counts = valid.sum(1)
    keep = counts > 0
    if not bool(keep.any()):
        return _zero_like_graph(bin_centers)
    centers, points, valid, counts = centers[keep], points[keep], valid[keep], counts[keep]

    # GT sorted per image, invalid entries pushed past the end and then replaced by the image's
    # largest valid depth: the rows stay ascending (searchsorted needs that) and finite (no inf
    # can reach a gradient); padded entries are never gathered (indices clamp to counts - 1)
    # and are left out of the GT -> centres mean.
    sorted_points = torch.where(valid, points, torch.full_like(points, float("inf"))).sort(dim=1).values
    largest = sorted_points.gather(1, (counts - 1).unsqueeze(1))
    in_range = torch.arange(points.shape[1], device=points.device).unsqueeze(0) < counts.unsqueeze(1)
    sorted_points = torch.where(in_range, sorted_points, largest)

    to_gt = _nearest_sq_dist(sorted_points, counts, centers).mean(1)

    sorted_centers = centers.sort(dim=1).values
    to_bins = _nearest_sq_dist(sorted_centers, torch.full_like(counts, centers.shape[1]), sorted_points)
    to_bins = torch.where(in_range, to_bins, torch.zeros_like(to_bins)).sum(1) / counts.to(to_bins.dtype)
    return (to_gt + to_bins).mean()


def sobel_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel derivatives of x [B,1,H,W] along +x (right) and +y (down), unnormalised kernel
    [[-1,0,1],[-2,0,2],[-1,0,1]] (a unit-per-pixel ramp gives 8), as METER's `Sobel`
    (METER's kernels have the opposite sign; no loss term here depends on the sign).
    Replicate padding: output [B,1,H,W] each."""
    kx = x.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)          # [2,1,3,3]: d/dx, d/dy
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels)
    return g[:, 0:1], g[:, 1:2]


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """Normalised 2-D Gaussian [size,size] (METER / pytorch_ssim: size 11, sigma 1.5)."""
    r = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(r * r) / (2 * sigma * sigma))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float, mask: torch.Tensor | None = None,
             window_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Per-pixel SSIM of a and b [B,1,H,W] -> [B,1,H,W], Gaussian window, constants
    C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = data_range.

    Local means, variances and covariance are Gaussian-weighted averages over the pixels of
    each window that lie inside the image and inside `mask` (normalised convolution). Where
    the whole window is inside and valid this is the standard SSIM (METER computes that map
    on the "valid" region only); near borders and GT holes the window simply shrinks to the
    valid pixels instead of mixing in zeros. Pixels whose window holds no valid pixel give 1.
    """
    m = torch.ones_like(a) if mask is None else mask.to(a.dtype)
    # The six windowed sums as one depthwise convolution (much faster on CPU than six
    # single-channel ones): weight, a, b, a^2, b^2, ab, each restricted to the mask.
    stacked = torch.cat([m, a * m, b * m, a * a * m, b * b * m, a * b * m], dim=1)
    window = _gaussian_window(window_size, sigma, a).expand(6, 1, window_size, window_size)
    sums = F.conv2d(stacked, window, padding=window_size // 2, groups=6)
    weight = sums[:, 0:1].clamp_min(1e-12)
    mu_a, mu_b, e_aa, e_bb, e_ab = (sums[:, i:i + 1] / weight for i in range(1, 6))
    var_a = e_aa - mu_a * mu_a
    var_b = e_bb - mu_b * mu_b
    cov = e_ab - mu_a * mu_b
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))


def _erode3x3(mask: torch.Tensor) -> torch.Tensor:
    """True where the pixel and its in-image 3x3 neighbours are all valid."""
    return -F.max_pool2d(-mask.float(), kernel_size=3, stride=1, padding=1) > 0.5


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x[mask].mean() if bool(mask.any()) else _zero_like_graph(x)


def balanced_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, max_depth: float = 10.0,
                  w_grad: float = 0.5, w_normal: float = 1.0, w_ssim: float = 1.0) -> dict[str, torch.Tensor]:
    """METER's balanced loss (Papa et al. 2023), metres:

    total = l1 + w_grad * gradient + w_normal * normal + w_ssim * ssim, where
    - l1 = mean |pred - gt| over valid pixels;
    - gradient = mean |gx_p - gx_g| + mean |gy_p - gy_g| (Sobel, `sobel_gradients`);
    - normal = mean (1 - cos(n_p, n_g)), n = [-gx, -gy, 1];
    - ssim = 1 - mean SSIM (11x11 Gaussian, sigma 1.5, data range = max_depth).

    Masking: l1 over valid pixels. gradient and normal over pixels whose whole in-image 3x3
    neighbourhood is valid (a Sobel stencil touching a hole or 0-filled GT would see a false
    edge). SSIM over valid pixels, with local statistics taken from the valid pixels of each
    window only (`ssim_map(..., mask=)`), so holes neither leak zeros nor empty the loss.
    Returns {"l1", "gradient", "normal", "ssim", "total"}, scalars.
    """
    with torch.autocast(device_type=pred.device.type, enabled=False):   # SSIM variances need fp32
        return _balanced_terms(pred.float(), gt.float(), mask.bool(), max_depth, w_grad, w_normal, w_ssim)


def _balanced_terms(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, max_depth: float, w_grad: float,
                    w_normal: float, w_ssim: float) -> dict[str, torch.Tensor]:
    """The terms of `balanced_loss` on float32 inputs."""
    l1 = _masked_mean((pred - gt).abs(), mask)

    gx_p, gy_p = sobel_gradients(pred)
    gx_g, gy_g = sobel_gradients(torch.where(mask, gt, torch.zeros_like(gt)))
    inner = _erode3x3(mask)
    gradient = _masked_mean((gx_p - gx_g).abs(), inner) + _masked_mean((gy_p - gy_g).abs(), inner)

    ones = torch.ones_like(pred)
    n_p = torch.cat([-gx_p, -gy_p, ones], dim=1)
    n_g = torch.cat([-gx_g, -gy_g, ones], dim=1)
    cos = F.cosine_similarity(n_p, n_g, dim=1, eps=1e-8).unsqueeze(1)
    normal = _masked_mean(1.0 - cos, inner)

    ssim = _masked_mean(1.0 - ssim_map(pred, gt, max_depth, mask=mask), mask)

    total = l1 + w_grad * gradient + w_normal * normal + w_ssim * ssim
    return {"l1": l1, "gradient": gradient, "normal": normal, "ssim": ssim, "total": total}
