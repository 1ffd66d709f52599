"""The paired bootstrap of a comparison: each variant minus the reference, over test images."""

from __future__ import annotations

import numpy as np

from ensemble_mde.errors import DataError



def paired_bootstrap(values: dict[str, np.ndarray], reference: dict[str, np.ndarray], *, resamples: int = 1000,
                     seed: int = 0, confidence: float = 0.95) -> dict[str, dict]:
    """Paired bootstrap over images of mean(values) - mean(reference), per metric.

    values/reference: {metric: [N] per-image values on the same images in the same order}.
    Image indices are resampled with replacement `resamples` times from `seed` (the same
    draws for every metric and every call). Returns {metric: {"diff": observed difference,
    "lo", "hi": percentile CI at `confidence`, "p": two-sided p = min(1, 2 min(P(d*<=0),
    P(d*>=0))) over the bootstrap differences d*, "resamples"}}. A p of 0 means < 1/resamples.
    """
    keys = [k for k in values if k in reference]
    n = len(values[keys[0]]) if keys else 0
    if n == 0:
        raise DataError("bootstrap needs at least one image")
    rng = np.random.default_rng(seed)
    diffs = {k: np.asarray(values[k], dtype=np.float64) - np.asarray(reference[k], dtype=np.float64) for k in keys}
    boot = {k: np.empty(resamples) for k in keys}
    chunk = max(1, 2_000_000 // n)
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        for k in keys:
            boot[k][start:start + len(idx)] = diffs[k][idx].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    out = {}
    for k in keys:
        b = boot[k]
        p = min(1.0, 2 * min(float(np.mean(b <= 0)), float(np.mean(b >= 0))))
        out[k] = {"diff": float(diffs[k].mean()), "lo": float(np.percentile(b, tail)),
                  "hi": float(np.percentile(b, 100 - tail)), "p": p, "resamples": int(resamples)}
    return out


def format_p(p: float, resamples: int) -> str:
    return f"p<{1 / resamples:.2g}" if p == 0 else f"p={p:.3f}"
