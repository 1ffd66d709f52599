"""What is in a dataset: `check_dataset` (format, splits, resolution, depth encoding and
range, holes, bad files, train/test overlap), `require_disjoint_test` (training's integrity
check) and `show_samples` (a grid of RGB / colourised depth)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from ensemble_mde.data.dataset import DepthDataset, build_dataset, open_source, plural, repeated_message
from ensemble_mde.data.splits import SPLITS, repeated_frames, split_records
from ensemble_mde.errors import ConfigError, DataError


MAX_REPORTED_ERRORS = 1000  # problems listed in a report (error_count has them all)


def evenly_spaced(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all of them when k >= n)."""
    if n <= k:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist()))


def _frame_stats(dataset: DepthDataset, indices: list[int], errors: list[str]) -> dict:
    sizes, encodings = Counter(), Counter()
    holes = non_finite = pixels = 0
    lo, hi = math.inf, -math.inf
    read = 0
    for i in indices:
        try:
            rgb, depth, _, encoding = dataset.load_frame(i)
        except DataError as e:
            errors.append(str(e))
            continue
        read += 1
        sizes[f"{rgb.shape[1]}x{rgb.shape[2]}"] += 1
        encodings[encoding] += 1
        d = depth.numpy()
        measured = np.isfinite(d) & (d > 0)  # a hole: no depth (0 or less), NaN or +-inf
        holes += int(d.size - measured.sum())
        non_finite += int((~np.isfinite(d)).sum())
        pixels += d.size
        positive = d[measured]
        lo, hi = min(lo, float(positive.min())), max(hi, float(positive.max()))
    return {
        "read": read,
        "resolution": dict(sizes.most_common()),
        "depth_encoding": dict(encodings.most_common()),
        "depth_range_m": [round(lo, 4), round(hi, 4)] if read else None,
        "hole_fraction": round(holes / pixels, 4) if pixels else None,
        "non_finite_fraction": round(non_finite / pixels, 4) if pixels else None,
        "non_finite_pixels": non_finite,
    }


def train_test_overlap(source) -> dict[str, list[str]]:
    """What training (the train and val splits) shares with the test split: {"frames": RGB
    files listed in both, "scenes": scene names in both (when the source's scenes are real,
    not pseudo-scenes)}; empty when the source lacks a train or test split."""
    if not (source.has("train") and source.has("test")):
        return {"frames": [], "scenes": []}
    test = source.records("test")
    training = source.records("train") + (source.records("val") if source.has("val") else [])
    frames = sorted({source.where(r.rgb) for r in training} & {source.where(r.rgb) for r in test})
    scenes = sorted({r.scene for r in training} & {r.scene for r in test}) if source.real_scenes else []
    return {"frames": frames, "scenes": scenes}


def describe_overlap(overlap: dict[str, list[str]]) -> str | None:
    """One line saying what train and test share (None when nothing)."""
    parts = []
    if overlap["frames"]:
        n = len(overlap["frames"])
        parts.append(f"{plural(n, 'test frame')} {'is' if n == 1 else 'are'} also listed for training "
                     f"(e.g. {overlap['frames'][0]})")
    if overlap["scenes"]:
        n = len(overlap["scenes"])
        parts.append(f"{plural(n, 'scene')} {'is' if n == 1 else 'are'} in both train and test "
                     f"(e.g. {overlap['scenes'][0]})")
    return "; ".join(parts) or None


def require_disjoint_test(cfg_data: dict) -> None:
    """Training refuses frames or scenes that the test split also lists, unless
    data.allow_test_overlap is true: a test score measures generalisation only on frames
    (and rooms) the model never saw."""
    if cfg_data.get("allow_test_overlap"):
        return
    source = open_source(cfg_data)
    problem = describe_overlap(train_test_overlap(source))
    if problem:
        raise DataError(f"{problem}: the test score would not measure generalisation; fix the lists, or set "
                        "data.allow_test_overlap=true to train anyway", source.root)


def check_dataset(cfg: dict, sample: int = 200) -> dict:
    """Report on the dataset cfg["data"] describes. Every listed file's existence is
    checked; up to `sample` evenly spaced frames per split are read for the statistics.
    Problems go to report["errors"] (one line each, naming the file): missing or bad files,
    a list file that cannot be read, an empty split, a frame listed twice, and frames or
    scenes listed both for training and in the test split (report["overlap"])."""
    cfg_data = cfg["data"]
    source = open_source(cfg_data)
    report = {"path": str(cfg_data["path"]), "format": source.format, "synthetic": source.is_synthetic,
              "splits": {}, "errors": []}
    unreadable = {}  # split -> why its own list file cannot be read
    for split in SPLITS:
        if source.has(split):
            try:
                source.records(split)
            except DataError as e:
                unreadable[split] = str(e)
    report["errors"] += list(unreadable.values())
    for split in SPLITS:
        carved = split == "val" and not source.has("val")
        if split in unreadable or (carved and "train" in unreadable):
            why = "carved from train, whose list cannot be read" if carved else unreadable[split]
            report["splits"][split] = {"count": 0, "absent": why}
            continue
        try:
            records = split_records(source, split, cfg_data)
        except DataError as e:
            report["splits"][split] = {"count": 0, "absent": "carved from train, which is absent"
                                       if carved and "absent" in report["splits"]["train"] else str(e)}
            continue
        if not records:
            report["errors"].append(str(DataError(f"the {split} split is empty ({source.listing(split)})",
                                                  source.root)))
        report["errors"] += [str(DataError(f"file not found (listed in {source.listing(split)})", m))
                             for m in source.missing(records)]
        repeated = repeated_frames(records)
        if repeated and not carved:  # a repeat in train shows there (val is carved from it)
            report["errors"].append(str(DataError(repeated_message(repeated, source, split),
                                                  source.where(repeated[0]))))
        present = [r for r in records if source.present(r)]
        dataset = DepthDataset(present, source, split=split, min_depth=float(cfg_data["min_depth"]),
                               max_depth=float(cfg_data["max_depth"]))
        report["splits"][split] = {"count": len(records), "scenes": len({r.scene for r in records}),
                                   "missing_files": len(records) - len(present), "repeated": len(repeated),
                                   **_frame_stats(dataset, evenly_spaced(len(present), sample), report["errors"])}
    overlap = train_test_overlap(source) if not unreadable else {"frames": [], "scenes": []}
    report["overlap"] = {"frames": len(overlap["frames"]), "scenes": len(overlap["scenes"])}
    problem = describe_overlap(overlap)
    if problem:
        report["errors"].append(str(DataError(f"{problem}: training refuses such a dataset unless "
                                              "data.allow_test_overlap=true", source.root)))
    report["error_count"] = len(report["errors"])
    del report["errors"][MAX_REPORTED_ERRORS:]
    if all("absent" in s for s in report["splits"].values()):
        raise DataError("no split found: " + "; ".join(s["absent"] for s in report["splits"].values()),
                        cfg_data["path"])
    return report


def format_report(report: dict) -> str:
    """The human-readable form of a check_dataset report."""
    kind = f"{report['format']} (synthetic)" if report["synthetic"] else report["format"]
    lines = [f"{report['path']}: {kind}"]
    for split, s in report["splits"].items():
        if "absent" in s:
            lines.append(f"  {split:<5}  absent ({s['absent']})")
            continue
        sizes = ", ".join(k + (f" ({n})" if len(s["resolution"]) > 1 else "") for k, n in s["resolution"].items())
        encodings = ", ".join(s["depth_encoding"])
        lo_hi = s["depth_range_m"]
        depth = f"{lo_hi[0]:.2f}-{lo_hi[1]:.2f} m" if lo_hi else "-"
        holes = f"{100 * s['hole_fraction']:.1f}%" if s["hole_fraction"] is not None else "-"
        if s["non_finite_pixels"]:  # worth a word even where their share rounds to 0.0%
            share = s["non_finite_fraction"]
            amount = f"{100 * share:.1f}%" if share >= 0.0005 else plural(s["non_finite_pixels"], "pixel")
            holes += f" ({amount} NaN or inf)"
        lines.append(f"  {split:<5}  {plural(s['count'], 'frame')}, {plural(s['scenes'], 'scene')}; "
                     f"{sizes or '-'} (HxW); depth {encodings or '-'}, {depth}, holes {holes}; {s['read']} read")
    if report["errors"]:
        lines.append(f"{plural(report['error_count'], 'problem')}:")
        lines += [f"  {e}" for e in report["errors"][:20]]
        if report["error_count"] > 20:
            lines.append(f"  ... and {report['error_count'] - 20} more")
    else:
        lines.append("ok: every listed file is present and every frame read is valid")
    return "\n".join(lines)


def show_samples(cfg: dict, out: str | Path, *, n: int = 8, split: str | None = None,
                 augment: bool = False) -> Path:
    """Save a grid of `n` evenly spaced samples of `split` (default: train if present, else
    test): RGB above colourised depth (invalid = black). Every sample is read before the
    image is written, so a bad file leaves no output."""
    from ensemble_mde.io import atomic_write_with
    from ensemble_mde.visualize import depth_colormap, pyplot

    out = Path(out)
    fmt = out.suffix.lower().lstrip(".") or "png"
    if split is None:
        split = "train" if open_source(cfg["data"]).has("train") else "test"
    dataset = build_dataset(cfg, split, augment=augment)
    samples = [dataset[i] for i in evenly_spaced(len(dataset), max(1, n))]

    plt = pyplot()

    cols = min(4, len(samples))
    pair_rows = math.ceil(len(samples) / cols)
    fig, axes = plt.subplots(2 * pair_rows, cols, figsize=(3.0 * cols, 4.6 * pair_rows), squeeze=False)
    valid_max = max(float(s["depth"].max()) for s in samples)
    vmax = min(float(cfg["data"]["max_depth"]), valid_max)
    cmap = depth_colormap()
    depth_axes = []
    for ax in axes.ravel():
        ax.set_axis_off()
    for k, s in enumerate(samples):
        top, bottom = axes[2 * (k // cols), k % cols], axes[2 * (k // cols) + 1, k % cols]
        top.imshow(s["rgb"].permute(1, 2, 0).numpy())
        top.set_title(s["name"][-32:], fontsize=7)
        d = s["depth"][0].numpy()
        im = bottom.imshow(np.ma.masked_less_equal(d, 0), cmap=cmap, vmin=0, vmax=vmax)
        bottom.set_title(f"{s['scene'][:24]}  depth (m)", fontsize=7)
        depth_axes.append(bottom)
    fig.colorbar(im, ax=depth_axes, fraction=0.03, pad=0.02, label="m")
    fig.suptitle(f"{dataset.root} ({split}{', augmented' if augment else ''})", fontsize=8)
    try:
        atomic_write_with(out, lambda f: fig.savefig(f, format=fmt, dpi=100))
    except ValueError as e:
        raise ConfigError(f"cannot write a {fmt!r} image ({e})", out) from None
    finally:
        plt.close(fig)
    return out
