"""Figures and report.md for a comparison (ensemble_mde.compare): a qualitative grid, the
meta-learners' weight maps, sparsification curves of the ensembles' uncertainty, training
curves, and links to the plots found in run folders.

    comparison = compare_runs(paths, bootstrap=1000)
    write_report(comparison, "report/")    # tables, figures, report.md

Figures are PNGs (matplotlib Agg) written atomically.
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import numpy as np

from ensemble_mde.compare.render import FORMAT_SUFFIX, render
from ensemble_mde.compare.tables import (Comparison, accuracy_table, compute_table, significance_table,
                                         weights_table)
from ensemble_mde.compare.uncertainty import METRIC_LABELS, uncertainty_table, variant_sparsification
from ensemble_mde.uncertainty import CURVE_METRICS
from ensemble_mde.metrics import METRIC_KEYS, crop_label
from ensemble_mde.io import atomic_write_text, atomic_write_with
from ensemble_mde.runs import RunFolder
from ensemble_mde.visualize import depth_colormap, pyplot

def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically, then close it."""
    atomic_write_with(Path(path), lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
    pyplot().close(fig)
    return Path(path)


def prediction_columns(comparison: Comparison) -> list[tuple[str, list]]:
    """(label, [H,W] depth maps of the figure images) for each base, the mean baseline and
    each stacking variant (the variant's first seed)."""
    figures = comparison.figures
    columns = []
    for v in comparison.variants:
        if v.kind == "baseline":
            if v.name == comparison.reference and figures.get("baseline"):
                columns.append((v.name, figures["baseline"], v))
        elif v.runs[0] in figures.get("pred", {}):
            columns.append((v.name, figures["pred"][v.runs[0]], v))
    return columns


def _image_rmse(variant, position: int) -> float:
    return float(variant.results[0].per_image["rmse"][position])


def save_qualitative_grid(comparison: Comparison, path: str | Path) -> Path | None:
    """Per figure image two rows: RGB, GT and every prediction (one depth colour scale per
    image, titles give that image's RMSE), then |pred - gt| under each prediction (one error
    scale per image; invalid GT black)."""
    figures = comparison.figures
    columns = prediction_columns(comparison)
    if not figures.get("names") or not columns:
        return None
    plt = pyplot()
    n, m = len(figures["names"]), len(columns)
    h, w = figures["gt"][0].shape
    cell = 2.2
    fig, axes = plt.subplots(2 * n, m + 2, figsize=((m + 2) * cell, 2 * n * (cell * h / w + 0.35)),
                             squeeze=False, layout="constrained")
    cmap = depth_colormap()
    err_cmap = plt.get_cmap("inferno").with_extremes(bad="black")
    lo, hi = comparison.info.get("min_depth", 1e-3), comparison.info.get("max_depth", 10.0)
    for i, name in enumerate(figures["names"]):
        gt = np.asarray(figures["gt"][i], dtype=np.float32)
        valid = (gt > lo) & (gt < hi)
        vmax = float(gt[valid].max()) if valid.any() else hi
        position = figures["indices"][i]
        top, bottom = axes[2 * i], axes[2 * i + 1]
        top[0].imshow(np.clip(np.asarray(figures["rgb"][i]).transpose(1, 2, 0), 0, 1))
        top[0].set_title(f"RGB {name}", fontsize=7)
        top[1].imshow(np.ma.masked_where(~valid, gt), cmap=cmap, vmin=0, vmax=vmax)
        top[1].set_title("GT (m)", fontsize=7)
        errors = [np.abs(np.asarray(maps[i], dtype=np.float32) - gt) for _, maps, _ in columns]
        emax = float(np.percentile(np.concatenate([e[valid] for e in errors]), 98)) if valid.any() else 1.0
        for j, (label, maps, variant) in enumerate(columns):
            im = top[j + 2].imshow(np.asarray(maps[i], dtype=np.float32), cmap=cmap, vmin=0, vmax=vmax)
            top[j + 2].set_title(f"{label}\nRMSE {_image_rmse(variant, position):.3f}", fontsize=7)
            err = bottom[j + 2].imshow(np.ma.masked_where(~valid, errors[j]), cmap=err_cmap, vmin=0,
                                       vmax=max(emax, 1e-6))
        bottom[1].text(0.5, 0.5, "|pred − gt| (m)\nbelow each\nprediction", ha="center", va="center",
                       fontsize=8, transform=bottom[1].transAxes)
        fig.colorbar(im, ax=top.tolist(), fraction=0.012, pad=0.01, label="depth (m)")
        fig.colorbar(err, ax=bottom.tolist(), fraction=0.012, pad=0.01, label="error (m)")
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(f"{comparison.info.get('data_name', '')} {comparison.info.get('split', '')}: predictions and "
                 f"absolute errors", fontsize=10)
    return save_figure(fig, path)


def save_weight_grid(comparison: Comparison, path: str | Path) -> Path | None:
    """One row per (stacking variant, figure image): RGB, then the meta-learner's per-pixel
    weight of each base learner (they sum to 1 at every pixel). One colour scale from 0 to
    the largest weight shown, so near-uniform weights still show their structure."""
    figures = comparison.figures
    rows = [(v.name, figures["weights"][v.runs[0]], figures["weight_names"].get(v.runs[0], []))
            for v in comparison.variants if v.kind == "meta" and v.runs[0] in figures.get("weights", {})]
    if not rows:
        return None
    plt = pyplot()
    k = max(len(maps[0]) for _, maps, _ in rows)
    n = len(figures["names"])
    h, w = figures["gt"][0].shape
    fig, axes = plt.subplots(len(rows) * n, k + 1, figsize=((k + 1) * 2.2, len(rows) * n * (2.2 * h / w + 0.45)),
                             squeeze=False, layout="constrained")
    vmax = max(float(np.asarray(m, dtype=np.float32).max()) for _, maps, _ in rows for m in maps)
    r = 0
    for label, maps, names in rows:
        for i in range(n):
            axes[r, 0].imshow(np.clip(np.asarray(figures["rgb"][i]).transpose(1, 2, 0), 0, 1))
            axes[r, 0].set_title(f"{label}\n{figures['names'][i]}", fontsize=7)
            weights = np.asarray(maps[i], dtype=np.float32)
            for j in range(weights.shape[0]):
                im = axes[r, j + 1].imshow(weights[j], cmap="viridis", vmin=0, vmax=vmax)
                learner = names[j] if j < len(names) else f"learner {j}"
                axes[r, j + 1].set_title(f"w {learner} (mean {weights[j].mean():.2f})", fontsize=7)
            r += 1
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.015, pad=0.01, label=f"weight (scale 0-{vmax:.2f})")
    fig.suptitle("meta-learner weight maps", fontsize=10)
    return save_figure(fig, path)


def save_sparsification_curves(comparison: Comparison, path: str | Path) -> Path | None:
    """One panel per metric (RMSE, REL): for each variant with an uncertainty its sparsification
    curve (solid; the metric over the pixels left after removing the most uncertain fraction,
    mean over images and seeds) beside its oracle's (dashed, same colour: the pixels removed by
    their true error). The gap between the two is its AUSE."""
    curves = [(v.name, scores) for v in comparison.variants if (scores := variant_sparsification(v))]
    if not curves:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(5.5 * len(CURVE_METRICS), 4.2), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, metric in zip(axes[0], CURVE_METRICS):
        for i, (name, scores) in enumerate(curves):
            curve, oracle = scores[metric]["curve"], scores[metric]["oracle"]
            removed = np.linspace(0.0, 1.0, len(curve))
            ax.plot(removed, curve, color=colours(i % 10), lw=1.5,
                    label=f"{name} (AUSE {scores[metric]['ause']:.3f})")
            ax.plot(removed, oracle, color=colours(i % 10), lw=1, ls="--")
        unit = " (m)" if metric == "rmse" else ""
        ax.set(xlabel="fraction of pixels removed (most uncertain first)", ylabel=f"{METRIC_LABELS[metric]}{unit}",
               title=f"sparsification: {METRIC_LABELS[metric]} (dashed: oracle)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)


def read_metrics_log(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(train records, val records) of a run's metrics.jsonl (empty lists if absent; damaged
    lines are left out: `compare` warns about them)."""
    records, _ = RunFolder(run_dir).log_entries()
    return [r for r in records if r["type"] == "train"], [r for r in records if r["type"] == "val"]


def save_training_curves(run_dirs: list[str | Path], path: str | Path) -> Path | None:
    """Training loss (total, log scale) against step and validation RMSE against epoch, one
    line per run."""
    logs = [(Path(d).name, *read_metrics_log(d)) for d in run_dirs]
    logs = [log for log in logs if log[1] or log[2]]
    if not logs:
        return None
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, train, val in logs:
        if train:
            left.plot([r["step"] for r in train], [r["total"] for r in train], marker=".", ms=3, label=name, lw=1)
        if val:
            right.plot([r["epoch"] for r in val], [r["rmse"] for r in val], marker="o", ms=3, label=name, lw=1)
    left.set(xlabel="step", ylabel="training loss (total)", title="training loss")
    if any(r["total"] > 0 for _, train, _ in logs for r in train):
        left.set_yscale("log")
    right.set(xlabel="epoch", ylabel="validation RMSE (m)", title="validation RMSE")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=7, loc="best")
    return save_figure(fig, path)


def run_plots(run_dirs: list[str | Path]) -> list[tuple[str, Path]]:
    """(label "<run>/<path inside it>", path) of the PNGs the runs' own tools wrote
    (lr_find.png, selectivity histograms, ablation curves ...)."""
    found = []
    for d in map(Path, run_dirs):
        found += [(f"{d.name}/{p.relative_to(d).as_posix()}", p) for p in sorted(d.rglob("*.png"))]
    return found


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), start.resolve())).as_posix()


def write_report(comparison: Comparison, out: str | Path, *, silog: bool = False,
                 title: str = "Ensemble comparison") -> Path:
    """Tables in every format (compare.write_tables), the figures and report.md in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_tables(comparison, out, silog=silog)
    run_dirs = []
    for info in comparison.run_infos:
        if info.path not in run_dirs:
            run_dirs.append(info.path)
    grid = save_qualitative_grid(comparison, out / "qualitative.png")
    weights = save_weight_grid(comparison, out / "weight_maps.png")
    sparsification = save_sparsification_curves(comparison, out / "sparsification.png")
    curves = save_training_curves(run_dirs, out / "training_curves.png")
    info = comparison.info
    lines = [f"# {title}", "",
             f"Data: `{info['data']}`, split **{info['split']}** ({info['n_images']} images), "
             f"{crop_label(info['eigen_crop']) + ' on' if info['eigen_crop'] else 'Eigen crop off'}, "
             f"flip TTA {'on' if info['flip'] else 'off'}; "
             f"evaluated on {info['device_name']}; written {time.strftime('%Y-%m-%d %H:%M')}.", "",
             "## Accuracy", "", render(accuracy_table(comparison, silog=silog), "md")]
    if comparison.bootstrap:
        lines += ["## Significance", "", "Negative Δ is better for errors, positive for δ. All metrics: "
                  "[bootstrap.json](bootstrap.json).", "", render(significance_table(comparison), "md")]
    lines += ["## Compute", "", render(compute_table(comparison), "md")]
    per_pixel = weights_table(comparison)
    if per_pixel is not None:
        lines += ["## Per-pixel weights", "", render(per_pixel, "md")]
    spread = uncertainty_table(comparison)
    if spread is not None:
        lines += ["## Uncertainty", "", render(spread, "md")]
        if sparsification:
            lines += ["Sparsification curves: the metric over the pixels left after removing the most uncertain "
                      "fraction (solid) beside the oracle's, which removes pixels by their true error (dashed); "
                      "the area between them is the AUSE. Curves and values per variant: "
                      "[sparsification.json](sparsification.json).", "", "![sparsification](sparsification.png)", ""]
    if grid or weights:
        lines += ["## Qualitative results", ""]
        if grid:
            lines += ["RGB, ground truth, each base learner, the simple average and each stacking variant "
                      "(first seed), with |pred − gt| below each prediction.", "",
                      "![qualitative](qualitative.png)", ""]
        if weights:
            lines += ["Per-pixel weights the meta-learner gives each base learner.", "",
                      "![weight maps](weight_maps.png)", ""]
        unweighted = [v.name for v in comparison.variants
                      if v.kind == "meta" and v.runs[0] not in comparison.figures.get("weights", {})]
        if unweighted:
            lines += [f"No weight maps for {', '.join(unweighted)}: the relaxed head predicts the depth "
                      "itself, not a convex blend of the bases.", ""]
    if curves:
        lines += ["## Training curves", "", "![training curves](training_curves.png)", ""]
    plots = run_plots(run_dirs)
    if plots:
        lines += ["## Plots from the run folders", ""]
        lines += [f"- [{label}]({_relative(p, out)})" for label, p in plots]
        lines.append("")
    lines += ["## Runs", "", "| Variant | Seeds | Run folders |", "|:--|:--|:--|"]
    for v in comparison.variants:
        folders = ", ".join(f"`{r}`" for r in v.runs)
        lines.append(f"| {v.name} | {', '.join(map(str, v.seeds))} | {folders} |")
    lines += ["", "Files: accuracy / compute tables as .md .csv .tex .json .txt, per-image metrics in "
              "[per_image.csv](per_image.csv).", ""]
    path = out / "report.md"
    atomic_write_text("\n".join(lines), path)
    return path



def write_tables(comparison: Comparison, out: str | Path, *, silog: bool = False) -> list[Path]:
    """accuracy.*, compute.*, (softmax ensembles) weights.* and (--uncertainty) uncertainty.*
    in every format (txt, md, csv, tex, json), per_image.csv, bootstrap.json (with a bootstrap)
    and sparsification.json (with uncertainty: each variant's curves, or null); written
    atomically. Returns the paths."""
    from ensemble_mde.io import atomic_write_json, atomic_write_text

    out = Path(out)
    written = []
    tables = [("accuracy", accuracy_table(comparison, silog=silog)), ("compute", compute_table(comparison)),
              ("weights", weights_table(comparison)), ("uncertainty", uncertainty_table(comparison))]
    for stem, table in [(stem, table) for stem, table in tables if table is not None]:
        for fmt, suffix in FORMAT_SUFFIX.items():
            path = out / f"{stem}.{suffix}"
            atomic_write_text(render(table, fmt), path)
            written.append(path)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["variant", "run", "seed", "image", *METRIC_KEYS])
    for v in comparison.variants:
        for r in v.results:
            for i, name in enumerate(comparison.image_names):
                writer.writerow([v.name, r.run, r.seed, name, *(repr(float(r.per_image[k][i])) for k in METRIC_KEYS)])
    atomic_write_text(buf.getvalue(), out / "per_image.csv")
    written.append(out / "per_image.csv")
    if comparison.bootstrap:
        atomic_write_json({**comparison.bootstrap_settings, "variants": comparison.bootstrap}, out / "bootstrap.json")
        written.append(out / "bootstrap.json")
    if comparison.info.get("uncertainty"):
        atomic_write_json({v.name: variant_sparsification(v) for v in comparison.variants},
                          out / "sparsification.json")
        written.append(out / "sparsification.json")
    return written
