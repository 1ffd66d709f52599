"""Engine pieces: the one-cycle schedule, the resumable epoch order, the LR range test."""

import math

import numpy as np
import pytest
import torch

from ensemble_mde.training.engine import EpochSampler, one_cycle_lr
from ensemble_mde.training.lr_finder import lr_range_test, steepest_descent_lr


def test_one_cycle_warmup_end_and_final_lr():
    lr, total = 1e-3, 1000
    assert one_cycle_lr(0, total, lr) == pytest.approx(lr / 25)            # starts at lr/25
    assert one_cycle_lr(150, total, lr) == pytest.approx(lr / 25 + (lr - lr / 25) * 0.5)  # linear half-way
    assert one_cycle_lr(300, total, lr) == pytest.approx(lr)               # warm-up ends at 30%: peak
    mid = 300 + 350                                                        # cosine half-way: mean of peak and end
    assert one_cycle_lr(mid, total, lr) == pytest.approx((lr + lr / 100) / 2)
    assert one_cycle_lr(total, total, lr) == pytest.approx(lr / 100)       # ends at lr/100


def test_epoch_sampler_is_seeded_and_resumable():
    full = EpochSampler(10, seed=3, epoch=2).order()
    assert sorted(full) == list(range(10))
    assert full == EpochSampler(10, seed=3, epoch=2).order()
    assert full != EpochSampler(10, seed=3, epoch=3).order()
    assert EpochSampler(10, seed=3, epoch=2, start=4).order() == full[4:]


def test_lr_range_test_suggests_the_right_decade():
    # Least squares with plain SGD: the curvature's largest eigenvalue is 10, so SGD is
    # fastest near lr = 1/10 and diverges above 2/10. The suggestion must be within a decade.
    torch.manual_seed(0)
    n, d = 256, 8
    q, _ = torch.linalg.qr(torch.randn(d, d))
    eig = torch.logspace(0, 1, d)                               # eigenvalues 1 .. 10
    x = torch.randn(n, d)
    x = x @ torch.linalg.inv(torch.linalg.cholesky(x.T @ x / n)).T  # whitened: x.T x / n = I
    x = x @ (q @ torch.diag(eig.sqrt()) @ q.T)                       # now x.T x / n = q diag(eig) q.T
    w_true = torch.randn(d)
    y = x @ w_true
    model = torch.nn.Linear(d, 1, bias=False)
    torch.nn.init.zeros_(model.weight)

    def batches():
        while True:
            yield None

    def loss_fn(m, _):
        return 0.5 * ((m(x).squeeze(1) - y) ** 2).mean()

    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    result = lr_range_test(model, loss_fn, batches(), opt, start_lr=1e-5, end_lr=10.0, steps=150)
    assert result["diverged"]
    assert 1e-2 <= result["suggestion"] <= 2e-1, result["suggestion"]
    assert all(math.isfinite(v) for v in result["lrs"])


def test_lr_suggestion_ignores_minibatch_noise():
    # A loss that falls by 1 around lr = 1e-3 (in log-lr), seen through minibatch noise of
    # std 0.5 and the finder's EMA. The suggestion must land where the noiseless smoothed
    # curve falls fastest (within half a decade), not on a dip of the noise.
    steps, beta = 200, 0.98
    lrs = np.logspace(-7, 0, steps)
    clean = 5.0 - 1.0 / (1.0 + np.exp(-2.0 * (np.log10(lrs) + 3.0)))
    noisy = clean + np.random.default_rng(0).normal(0.0, 0.5, steps)

    def smooth(values):
        avg, out = 0.0, []
        for i, v in enumerate(values):
            avg = beta * avg + (1 - beta) * v
            out.append(avg / (1 - beta ** (i + 1)))
        return np.array(out)

    expected = lrs[int(np.argmin(np.gradient(smooth(clean), np.log10(lrs))))]
    suggestion = steepest_descent_lr(list(lrs), list(smooth(noisy)), beta)
    assert abs(math.log10(suggestion / expected)) <= 0.5, (suggestion, expected)
