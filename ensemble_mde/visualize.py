"""Depth images: 16-bit millimetre PNGs, float32 .npy arrays, colourised depth and uncertainty
with a colour bar, weight maps; each written atomically and, given the image it was predicted
from, naming it in its PNG text (a .npy has no text: the depth PNG of its stem speaks for it)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ensemble_mde.io import atomic_write_with, distinct_stems

DEPTH_CMAP = "magma_r"  # near = bright, far = dark
# the files of one image's prediction; the first is the depth PNG whose Source speaks for the .npy files
PREDICTION_SUFFIXES = ("_depth.png", "_depth_color.png", "_weights.png", "_depth.npy", "_weights.npy",
                       "_uncertainty.npy", "_uncertainty.png")
SOURCE_KEY = "Source"  # PNG text: the absolute path of the image a file was predicted from
DEPTH_SCALE_KEY = "Depth units per metre"  # PNG text of a depth PNG: 1000 (mm) or 256 (KITTI's)


def source_text(image: str | Path | None) -> dict[str, str]:
    """The PNG text that names `image` as the source of a prediction ({} for None)."""
    return {} if image is None else {SOURCE_KEY: os.path.abspath(image)}


def made_from(path: Path) -> str | None:
    """The image a PNG was predicted from, as its Source text says; None for a file without
    one (not written by predict, or not a PNG). A .npy output: its stem's depth PNG's."""
    if path.suffix == ".npy":
        stem = next((path.name[:-len(s)] for s in PREDICTION_SUFFIXES if path.name.endswith(s)), None)
        return None if stem is None else made_from(path.with_name(stem + PREDICTION_SUFFIXES[0]))
    try:
        with Image.open(path) as png:
            return png.info.get(SOURCE_KEY)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def prediction_stems(images: list[str | Path], out: Path) -> list[str]:
    """The stem of each image's prediction files in `out` (io.distinct_stems), never that of a
    file there predicted from another image, or not by predict, or that is one of `images`:
    an image's own earlier prediction is replaced, no other file."""
    inputs = {os.path.abspath(image) for image in images}

    def taken(image, stem: str) -> bool:
        files = [out / f"{stem}{suffix}" for suffix in PREDICTION_SUFFIXES]
        return any(f.exists() and (os.path.abspath(f) in inputs or made_from(f) != os.path.abspath(image))
                   for f in files)

    return distinct_stems(images, taken)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def depth_colormap():
    """DEPTH_CMAP cut at 85%: its far end is near-black, which would look like a hole;
    invalid pixels (masked) are black."""
    from matplotlib.colors import ListedColormap

    plt = pyplot()
    return ListedColormap(plt.get_cmap(DEPTH_CMAP)(np.linspace(0.0, 0.85, 256))).with_extremes(bad="black")


def png_units_per_metre(max_depth: float) -> int:
    """Units per metre of the 16-bit depth PNG of a model predicting up to `max_depth` m:
    millimetres (NYU's and BTS's NYU convention) when they hold the range (65.535 m), else
    KITTI's metres x 256 (its ground truth's, and what BTS writes for KITTI; up to 255.99 m)."""
    return 1000 if max_depth * 1000 <= 65535 else 256


def save_depth_png(depth: torch.Tensor | np.ndarray, path: Path, *, units_per_metre: int = 1000,
                   source: str | Path | None = None) -> None:
    """[H,W] metres -> 16-bit PNG of metres x units_per_metre (png_units_per_metre; 0 = invalid,
    which a depth above 0 never becomes: it is at least one unit), the scale in its text
    (DEPTH_SCALE_KEY); source: the image it was predicted from."""
    d = np.asarray(depth, dtype=np.float64)
    units = np.where(d > 0, np.clip(np.round(d * units_per_metre), 1, 65535), 0).astype(np.uint16)
    info = PngInfo()
    for key, value in {**source_text(source), DEPTH_SCALE_KEY: str(units_per_metre)}.items():
        info.add_text(key, value)
    atomic_write_with(path, lambda f: Image.fromarray(units).save(f, format="PNG", pnginfo=info))


def save_npy(array: torch.Tensor | np.ndarray, path: Path) -> None:
    """An array (metres, or weights) -> float32 .npy, written atomically."""
    values = np.asarray(array, dtype=np.float32)
    atomic_write_with(path, lambda f: np.save(f, values))


def save_colorized_depth(depth, path: Path, *, max_depth: float = 10.0, title: str = "",
                         source: str | Path | None = None) -> None:
    """[H,W] metres -> PNG with a colour bar in metres spanning the map's valid range
    (near = bright; invalid pixels black); source: the image it was predicted from."""
    d = np.asarray(depth, dtype=np.float32)
    valid = d[(d > 0) & (d <= max_depth)]
    lo, hi = (float(valid.min()), float(valid.max())) if valid.size else (0.0, max_depth)
    _save_colorized(np.ma.masked_less_equal(d, 0), path, cmap=depth_colormap(), lo=lo, hi=hi, title=title,
                    source=source)


def save_colorized_uncertainty(sigma, path: Path, *, title: str = "", source: str | Path | None = None) -> None:
    """[H,W] ensemble spread sigma (metres, `uncertainty.ensemble_sigma`) -> PNG with a colour
    bar in metres from 0 to the map's largest value (bright = uncertain); source: the image."""
    s = np.asarray(sigma, dtype=np.float32)
    _save_colorized(s, path, cmap=pyplot().get_cmap("inferno"), lo=0.0, hi=float(s.max()) if s.size else 0.0,
                    title=title, source=source)


def _save_colorized(values: np.ndarray, path: Path, *, cmap, lo: float, hi: float, title: str,
                    source: str | Path | None) -> None:
    """[H,W] metres (masked pixels: the colour map's `bad`) -> PNG with a colour bar in metres."""
    plt = pyplot()
    h, w = values.shape
    fig, ax = plt.subplots(figsize=(max(3.0, w / 100 + 1.2), max(2.4, h / 100)), dpi=100)
    im = ax.imshow(values, cmap=cmap, vmin=lo, vmax=max(hi, lo + 1e-3))  # the map's own range
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="m")
    fig.tight_layout()
    atomic_write_with(path, lambda f: fig.savefig(f, format="png", metadata=source_text(source)))
    plt.close(fig)


def save_weight_maps(weights: torch.Tensor, names, path: Path, *, source: str | Path | None = None) -> None:
    """[K,H,W] per-pixel learner weights in [0,1] -> one PNG with a panel per learner; source:
    the image they were predicted for."""
    plt = pyplot()
    w = np.asarray(weights, dtype=np.float32)
    k = w.shape[0]
    names = list(names) if names else [f"learner {i}" for i in range(k)]
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 2.8), squeeze=False)
    for i, ax in enumerate(axes[0]):
        im = ax.imshow(w[i], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"weight: {names[i]}", fontsize=9)
        ax.set_axis_off()
    fig.colorbar(im, ax=list(axes[0]), fraction=0.02, pad=0.02)
    atomic_write_with(path, lambda f: fig.savefig(f, format="png", dpi=100, metadata=source_text(source)))
    plt.close(fig)
