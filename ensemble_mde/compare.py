"""`ensemble compare`: the paper's tables from a set of run folders.

Every run is evaluated ONCE on the test split: its per-image NYU metrics are kept
(ensemble_mde.metrics), the base learners' depth maps are kept on disk for the averaging
baselines (meta_learner.baselines) and fed to the freeze-mode stacked ensembles (whose
bases are those very checkpoints), and a few images' maps are kept for the figures.
Tables, baselines, the bootstrap and the figures all reuse these results.

    comparison = compare_runs(["runs/adabins", "runs/bts", "runs/meta_rgbd_freeze"], bootstrap=1000)
    print(render(accuracy_table(comparison), "md"))

Rows: base learners, baselines (mean = the paper's "Baseline", median, weighted by
validation RMSE; the selection and convex oracles = upper bounds, never ranked),
stacked-generalization variants. Runs whose configs differ only in run.seed / run.name are one row: mean ± sample
std over seeds. In each metric column the best ranked row is marked 1 (bold) and the
second 2 (underlined), compared at the displayed precision.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ensemble_mde import config as config_mod
from ensemble_mde import runs as runs_mod
from ensemble_mde.errors import CheckpointError, ConfigError, DataError
from ensemble_mde.metrics import METRIC_KEYS, HIGHER_IS_BETTER, MetricAccumulator, flip_tta

BASELINE_NAMES = ("mean", "median", "weighted", "oracle", "convex")
BASELINE_LABELS = {"mean": "Baseline (mean)", "median": "Median", "weighted": "Weighted (1/val RMSE)",
                   "oracle": "Oracle (selection)", "convex": "Oracle (convex blend)"}
ORACLE_NOTE = ("† Upper bounds that look at the ground truth (not ranked). Oracle (selection): per pixel the base "
               "nearest the GT; no single base has a smaller per-pixel absolute error, but it bounds neither blends "
               "nor log or ratio metrics. Oracle (convex blend): per pixel the GT clipped into the range of the "
               "bases' depths; no base, average or stacked ensemble (each a per-pixel convex blend of the maps) "
               "beats it on a pixel.")
INPUT_ORDER = {"rgb": 0, "d": 1, "rgb+d": 2}
MODE_ORDER = {"freeze": 0, "finetune": 1, "simultaneous": 2}
KIND_ORDER = {"base": 0, "baseline": 1, "meta": 2}
# (metric key, header, LaTeX header) in the column order of the SG study's tables.
METRIC_COLUMNS = (
    ("d1", "δ<1.25", r"$\delta<1.25$"), ("d2", "δ<1.25²", r"$\delta<1.25^2$"),
    ("d3", "δ<1.25³", r"$\delta<1.25^3$"), ("abs_rel", "REL", "REL"), ("sq_rel", "Sq REL", "Sq REL"),
    ("rmse", "RMSE", "RMSE"), ("rmse_log", "RMSE log", "RMSE log"), ("log10", "log10", r"$\log_{10}$"),
    ("silog", "SILog", "SILog"),
)
# Config keys that do not change what a run learns: runs differing only here are seeds of one variant.
NOT_PART_OF_VARIANT = ("run.seed", "run.name", "run.runs_dir", "run.device", "data.workers",
                       "ensemble.bases", "ensemble.cache_dir")


# ---------------------------------------------------------------------------------------
# Runs: discovery, reading, grouping by seed

@dataclass
class RunInfo:
    """A run folder: its resolved config, checkpoint, summary.json (empty if absent), the
    records of metrics.jsonl (and the numbers of the lines that could not be read) and kind."""
    path: Path
    cfg: dict
    checkpoint: Path
    summary: dict
    log: list[dict] = field(default_factory=list)
    log_skipped: list[int] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "meta" if self.cfg.get("kind") == "meta" else "base"

    @property
    def seed(self) -> int:
        return int(self.cfg["run"].get("seed") or 0)


def finished_runs(runs_dir: str | Path) -> list[Path]:
    """Run folders under runs_dir holding summary.json and best.pt, sorted by name."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise ConfigError("runs folder not found (--runs-dir)", root)
    found = sorted(p.parent for p in root.glob("*/summary.json") if (p.parent / "best.pt").is_file())
    if not found:
        raise ConfigError("no finished run (summary.json + best.pt) in this folder; pass run folders", root)
    return found


def read_run(path: str | Path) -> RunInfo:
    """A run folder (or a checkpoint file inside one) -> RunInfo; the config is the checkpoint's."""
    from ensemble_mde.io import read_json, read_jsonl

    checkpoint = runs_mod.resolve_checkpoint(path)
    folder = checkpoint.parent
    cfg_file = folder / "config.yaml"
    cfg = config_mod.read_yaml(cfg_file) if cfg_file.is_file() else runs_mod.read_checkpoint(checkpoint)["config"]
    summary_file, log_file = folder / "summary.json", folder / "metrics.jsonl"
    summary = read_json(summary_file) if summary_file.is_file() else {}
    log, skipped = read_jsonl(log_file) if log_file.is_file() else ([], [])
    return RunInfo(folder.resolve(), cfg, checkpoint.resolve(), summary, log, skipped)


def has_training_data(cfg: dict) -> bool:
    """False for a run that was imported (official weights): it names no dataset of ours."""
    return cfg["data"].get("path") is not None


def config_identity(cfg: dict, base_identity=None) -> str:
    """Canonical JSON of what makes a variant: the config without NOT_PART_OF_VARIANT keys.
    A meta run's bases enter by `base_identity(resolved entry)` (default: their model section),
    not by checkpoint path or hash, so meta runs over the seed-s bases group across s."""
    c = copy.deepcopy(cfg)
    for key in NOT_PART_OF_VARIANT:
        config_mod.drop_key(c, key)
    if c.get("kind") == "meta":
        resolved = c.get("ensemble", {}).pop("resolved", []) or []
        c["ensemble"]["bases_identity"] = [base_identity(r) if base_identity else r.get("model") for r in resolved]
    return json.dumps(c, sort_keys=True, default=str)


def validation_rmse(run: RunInfo) -> float | None:
    """RMSE (m) on the validation split of the epoch best.pt holds: the last metrics.jsonl val
    record marked best; else the best.pt checkpoint's metrics; None when neither exists."""
    best = None
    for record in run.log:
        if record.get("type") == "val" and record.get("best"):
            best = record.get("rmse")
    if best is None and run.checkpoint.name == "best.pt":
        best = (runs_mod.read_checkpoint(run.checkpoint).get("metrics") or {}).get("rmse")
    return float(best) if best is not None else None


# ---------------------------------------------------------------------------------------
# Results and variants

@dataclass
class RunResult:
    """One evaluated run (or one baseline over one set of bases): per-image metrics in
    dataset order and its cost. group: config identity (equal = seeds of one variant)."""
    name: str
    kind: str                                  # "base" | "baseline" | "meta"
    run: str                                   # run folder (a baseline: its bases' folders joined by "+")
    seed: int
    group: str
    per_image: dict[str, np.ndarray]           # metric -> [N] values per image (the comparison's image order)
    upper_bound: bool = False
    order: tuple = ()                          # sort key inside its kind
    cost: dict = field(default_factory=dict)   # params, gmacs, latency_ms, fps, input_size, train_seconds*


@dataclass
class Variant:
    """A row of the tables: one run, or several runs that differ only by seed."""
    name: str
    kind: str
    results: list[RunResult]
    upper_bound: bool = False

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.results]

    @property
    def runs(self) -> list[str]:
        return [r.run for r in self.results]

    @property
    def cost(self) -> dict:
        return self.results[0].cost

    def run_means(self, key: str) -> np.ndarray:
        """[n_runs] mean over images of `key` for each seed."""
        return np.array([math.fsum(r.per_image[key]) / len(r.per_image[key]) for r in self.results])

    def mean_std(self, key: str) -> tuple[float, float | None]:
        """(mean over seeds, sample std over seeds (ddof 1) or None for a single run)."""
        means = self.run_means(key)
        return float(means.mean()), (float(means.std(ddof=1)) if len(means) > 1 else None)

    def image_values(self, key: str) -> np.ndarray:
        """[N] per-image `key`, averaged over seeds (the paired bootstrap's unit)."""
        return np.mean([r.per_image[key] for r in self.results], axis=0)


def group_by_seed(results: list[RunResult]) -> list[Variant]:
    """Results with equal `group` become one Variant (mean ± std over seeds); order: kind
    (bases, baselines, stacking), then each result's `order`, then name. Display names that
    would repeat get the first run's folder name appended."""
    groups: dict[tuple, list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.kind, r.group), []).append(r)
    variants = [Variant(rs[0].name, rs[0].kind, sorted(rs, key=lambda r: r.seed), rs[0].upper_bound)
                for rs in groups.values()]
    variants.sort(key=lambda v: (KIND_ORDER[v.kind], v.results[0].order, v.name))
    names = [v.name for v in variants]
    for v in variants:
        if names.count(v.name) > 1:
            v.name = f"{v.name} [{Path(v.runs[0].split('+')[0]).name}]"
    return variants


# ---------------------------------------------------------------------------------------
# The paired bootstrap

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


# ---------------------------------------------------------------------------------------
# Tables: columns, rows, ranking marks, rendering in table | md | csv | latex | json

@dataclass
class Column:
    key: str
    header: str
    latex: str
    better: str | None = None      # "higher" | "lower" | None (not ranked)
    digits: int = 3

    @property
    def arrow(self) -> str:
        return {"higher": " ↑", "lower": " ↓"}.get(self.better or "", "")


@dataclass
class Table:
    """rows: {"name", "kind", "upper_bound", "n_seeds", "values": {key: number|str|None},
    "std": {key: float}, "text": {key: str (shown instead of the value)}, "rank": {key: 1|2}}."""
    title: str
    columns: list[Column]
    rows: list[dict]
    notes: list[str] = field(default_factory=list)


def mark_ranks(table: Table) -> Table:
    """Set row["rank"][key] = 1 (best) / 2 (second) in every column with a direction, over the
    rows that are not upper bounds, comparing values rounded to the displayed digits (ties
    share a mark; the second mark goes to the next distinct value)."""
    for col in table.columns:
        if col.better is None:
            continue
        ranked = [(round(r["values"][col.key], col.digits), r) for r in table.rows
                  if not r.get("upper_bound") and isinstance(r["values"].get(col.key), (int, float))]
        distinct = sorted({v for v, _ in ranked}, reverse=col.better == "higher")
        for value, row in ranked:
            place = distinct.index(value) + 1
            if place <= 2:
                row.setdefault("rank", {})[col.key] = place
    return table


def cell_text(row: dict, col: Column, pm: str = " ± ") -> str:
    if col.key in row.get("text", {}):
        return row["text"][col.key]
    value = row["values"].get(col.key)
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    text = f"{value:.{col.digits}f}"
    std = row.get("std", {}).get(col.key)
    return text + (f"{pm}{std:.{col.digits}f}" if std is not None else "")


def _row_label(row: dict) -> str:
    return row["name"] + ("†" if row.get("upper_bound") else "")


def _markdown(table: Table) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    def cell(row, col):
        text = esc(cell_text(row, col))
        place = row.get("rank", {}).get(col.key)
        return f"**{text}**" if place == 1 else f"<u>{text}</u>" if place == 2 else text

    lines = [f"**{esc(table.title)}**", "",
             "| Variant | " + " | ".join(esc(c.header + c.arrow) for c in table.columns) + " |",
             "|:--|" + "--:|" * len(table.columns)]
    for row in table.rows:
        name = f"*{esc(_row_label(row))}*" if row.get("upper_bound") else esc(_row_label(row))
        lines.append(f"| {name} | " + " | ".join(cell(row, c) for c in table.columns) + " |")
    if table.notes:
        lines.append("")
        lines += [f"{esc(note)}  " for note in table.notes]
    return "\n".join(lines) + "\n"


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "†": r"$^\dagger$", "±": r"$\pm$", "δ": r"$\delta$", "Δ": r"$\Delta$", "—": "--",
                  "↑": r"$\uparrow$", "↓": r"$\downarrow$", "²": r"$^2$", "³": r"$^3$", "<": r"$<$",
                  ">": r"$>$", "≤": r"$\le$", "≥": r"$\ge$", "−": "-", "×": r"$\times$", "…": r"\ldots{}"}


def latex_escape(text: str) -> str:
    """`text` as LaTeX source in plain ASCII (an engine without unicode input reads it)."""
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in text)


def _latex(table: Table) -> str:
    def cell(row, col):
        text = latex_escape(cell_text(row, col))
        place = row.get("rank", {}).get(col.key)
        return rf"\textbf{{{text}}}" if place == 1 else rf"\underline{{{text}}}" if place == 2 else text

    arrows = {"higher": r" $\uparrow$", "lower": r" $\downarrow$"}
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.title)}}}",
             r"\begin{tabular}{l" + "r" * len(table.columns) + "}", r"\toprule",
             "Variant & " + " & ".join(c.latex + arrows.get(c.better or "", "") for c in table.columns)
             + r" \\", r"\midrule"]
    previous = None
    for row in table.rows:
        if previous is not None and row["kind"] != previous:
            lines.append(r"\midrule")
        previous = row["kind"]
        lines.append(latex_escape(_row_label(row)) + " & " + " & ".join(cell(row, c) for c in table.columns) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        lines.append(r"\par\footnotesize " + r" \\ ".join(latex_escape(n) for n in table.notes))
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _csv(table: Table) -> str:
    has_std = {c.key for c in table.columns if any(c.key in r.get("std", {}) for r in table.rows)}
    header = ["variant", "kind", "upper_bound", "n_seeds"]
    for c in table.columns:
        header.append(c.key)
        if c.key in has_std:
            header.append(f"{c.key}_std")
        if c.better:
            header.append(f"{c.key}_rank")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in table.rows:
        line = [r["name"], r["kind"], int(bool(r.get("upper_bound"))), r.get("n_seeds", 1)]
        for c in table.columns:
            value = r["values"].get(c.key)
            line.append("" if value is None else value if not isinstance(value, float) else repr(value))
            if c.key in has_std:
                std = r.get("std", {}).get(c.key)
                line.append("" if std is None else repr(std))
            if c.better:
                line.append(r.get("rank", {}).get(c.key, ""))
        writer.writerow(line)
    return buf.getvalue()


def _json(table: Table) -> str:
    return json.dumps(table_dict(table), indent=2) + "\n"


def table_dict(table: Table) -> dict:
    """The table as plain data: title, columns (key, header, better), rows, notes."""
    return {"title": table.title,
            "columns": [{"key": c.key, "header": c.header, "better": c.better} for c in table.columns],
            "rows": [{"name": r["name"], "kind": r["kind"], "upper_bound": bool(r.get("upper_bound")),
                      "n_seeds": r.get("n_seeds", 1), "values": r["values"], "std": r.get("std", {}),
                      "rank": r.get("rank", {}), **({"extra": r["extra"]} if "extra" in r else {})}
                     for r in table.rows],
            "notes": table.notes}


def rich_table(table: Table):
    """A rich Table: first place bold, second underlined, upper bounds italic. No vertical
    rules, so 120 columns hold the accuracy table; narrower terminals wrap headers and ± values."""
    from rich import box
    from rich.table import Table as RichTable
    from rich.text import Text

    out = RichTable(title=table.title, caption="\n".join(table.notes) or None, caption_justify="left",
                    box=box.SIMPLE_HEAD)
    out.add_column("Variant", no_wrap=True)
    for c in table.columns:
        out.add_column(c.header + c.arrow, justify="right")
    previous = None
    for row in table.rows:
        if previous is not None and row["kind"] != previous:
            out.add_section()
        previous = row["kind"]
        cells = [Text(_row_label(row), style="italic" if row.get("upper_bound") else "")]
        for c in table.columns:
            place = row.get("rank", {}).get(c.key)
            cells.append(Text(cell_text(row, c), style="bold" if place == 1 else "underline" if place == 2 else ""))
        out.add_row(*cells)
    return out


def render(table: Table, fmt: str) -> str:
    """The table as text in `fmt`: table (rich, plain text), md, csv, latex, json."""
    if fmt == "table":
        from rich.console import Console

        from ensemble_mde.progress import PIPED_WIDTH

        console = Console(file=io.StringIO(), width=PIPED_WIDTH, color_system=None)
        console.print(rich_table(table))
        return console.file.getvalue()
    writers = {"md": _markdown, "csv": _csv, "latex": _latex, "json": _json}
    if fmt not in writers:
        raise ConfigError(f"unknown format {fmt!r}; use table, md, csv, latex or json", "--format")
    return writers[fmt](table)


FORMAT_SUFFIX = {"table": "txt", "md": "md", "csv": "csv", "latex": "tex", "json": "json"}


# ---------------------------------------------------------------------------------------
# The comparison and its tables

@dataclass
class Comparison:
    variants: list[Variant]
    image_names: list[str]
    info: dict                                    # data, split, eigen_crop, flip, device, ...
    reference: str | None = None                  # name of the "mean" baseline variant
    bootstrap: dict[str, dict] = field(default_factory=dict)   # variant -> paired_bootstrap(...)
    bootstrap_settings: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)   # see EvaluationPass.figures
    run_infos: list[RunInfo] = field(default_factory=list)

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def run_bootstrap(self, resamples: int, seed: int = 0) -> None:
        """Each variant minus the mean baseline, paired over test images."""
        if self.reference is None:
            raise ConfigError("the bootstrap compares with the mean baseline; add 'mean' to --baselines",
                              "--bootstrap")
        ref = self.variant(self.reference)
        ref_values = {k: ref.image_values(k) for k in METRIC_KEYS}
        self.bootstrap = {v.name: paired_bootstrap({k: v.image_values(k) for k in METRIC_KEYS}, ref_values,
                                                   resamples=resamples, seed=seed)
                          for v in self.variants if v.name != self.reference}
        self.bootstrap_settings = {"resamples": int(resamples), "seed": int(seed), "reference": self.reference,
                                   "confidence": 0.95}


def _seed_note(variants: list[Variant]) -> list[str]:
    seeds = sorted({len(v.results) for v in variants if len(v.results) > 1})
    return [f"Rows over several seeds show mean ± sample std over seeds ({', '.join(map(str, seeds))} seeds)."] \
        if seeds else []


def _bootstrap_text(b: dict) -> str:
    return f"{b['diff']:+.3f} [{b['lo']:+.3f}, {b['hi']:+.3f}]"


def accuracy_table(comparison: Comparison, *, silog: bool = False, delta_metric: str | None = "rmse") -> Table:
    """The study's accuracy table: Variant, #Params, d1, d2, d3, REL, Sq REL, RMSE, RMSE log,
    log10 (+ SILog), and with a bootstrap (unless delta_metric is None) the column
    "Δ <metric> vs Baseline [95% CI], p"."""
    info = comparison.info
    columns = [Column("params", "#Params", r"\#Params")]
    columns += [Column(k, h, tex, "higher" if k in HIGHER_IS_BETTER else "lower")
                for k, h, tex in METRIC_COLUMNS if silog or k != "silog"]
    boot = comparison.bootstrap if delta_metric else {}
    if boot:
        label = next(h for k, h, _ in METRIC_COLUMNS if k == delta_metric)
        columns.append(Column("delta", f"Δ {label} vs Baseline [95% CI], p",
                              rf"$\Delta$ {latex_escape(label)} vs Baseline [95\% CI], $p$"))
    rows = []
    for v in comparison.variants:
        values, std, text = {}, {}, {}
        for k in METRIC_KEYS:
            values[k], s = v.mean_std(k)
            if s is not None:
                std[k] = s
        params = v.cost.get("params")
        values["params"] = params
        if params is not None:
            text["params"] = f"{params / 1e6:.2f}M"
        row = {"name": v.name, "kind": v.kind, "upper_bound": v.upper_bound, "n_seeds": len(v.results),
               "values": values, "std": std, "text": text}
        if boot:
            b = boot.get(v.name, {}).get(delta_metric)
            if b is None:
                text["delta"] = "reference"
            else:
                values["delta"] = b["diff"]
                text["delta"] = f"{_bootstrap_text(b)}, {format_p(b['p'], b['resamples'])}"
                row["extra"] = {"bootstrap": boot[v.name]}
        rows.append(row)
    n = len(comparison.image_names)
    notes = [f"↑ higher is better, ↓ lower is better; per-image metrics averaged over {n} "
             f"{info.get('split', 'test')} images; best in bold, second underlined."]
    if any(v.upper_bound for v in comparison.variants):
        notes.append(ORACLE_NOTE)
    notes += _seed_note(comparison.variants)
    notes.append("#Params: a stacking variant counts its base learners and meta-learner; a baseline, its bases.")
    if boot:
        notes.append(_bootstrap_note(comparison))
    title = (f"Accuracy on {info.get('data_name', 'the test set')} ({info.get('split', 'test')}, "
             f"{n} images{', Eigen crop' if info.get('eigen_crop') else ''}"
             f"{', flip TTA' if info.get('flip') else ''})")
    return mark_ranks(Table(title, columns, rows, notes))


def _bootstrap_note(comparison: Comparison) -> str:
    s = comparison.bootstrap_settings
    return (f"Δ: paired bootstrap over test images of the variant minus {s['reference']} ({s['resamples']} "
            f"resamples, seed {s['seed']}); 95% percentile interval; two-sided p = 2 min(P(Δ*≤0), P(Δ*≥0)).")


def significance_table(comparison: Comparison, keys=("rmse", "abs_rel", "d1")) -> Table:
    """Δ vs the mean baseline with its 95% CI and p for a few metrics, one row per variant
    (the bootstrap must have run). Negative Δ is better for errors, positive for δ."""
    labels = {k: (h, tex) for k, h, tex in METRIC_COLUMNS}
    columns = []
    for k in keys:
        columns += [Column(f"{k}_delta", f"Δ {labels[k][0]} [95% CI]", rf"$\Delta$ {labels[k][1]} [95\% CI]"),
                    Column(f"{k}_p", "p", "$p$")]
    rows = []
    for v in comparison.variants:
        b = comparison.bootstrap.get(v.name)
        if b is None:
            continue
        values = {f"{k}_{part}": b[k][field] for k in keys for part, field in (("delta", "diff"), ("p", "p"))}
        text = {f"{k}_delta": _bootstrap_text(b[k]) for k in keys}
        text.update({f"{k}_p": format_p(b[k]["p"], b[k]["resamples"]) for k in keys})
        rows.append({"name": v.name, "kind": v.kind, "upper_bound": v.upper_bound, "n_seeds": len(v.results),
                     "values": values, "text": text})
    return Table(f"Paired bootstrap against {comparison.reference}", columns, rows, [_bootstrap_note(comparison)])


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def compute_table(comparison: Comparison) -> Table:
    """Params, size (fp32 MB), GMACs at the evaluation input size, latency and FPS measured on
    the comparison's device, training time (own run; with the bases it started from)."""
    columns = [Column("input", "Input", "Input"), Column("params", "Params (M)", "Params (M)", digits=2),
               Column("size_mb", "Size (MB)", "Size (MB)", digits=1), Column("gmacs", "GMACs", "GMACs", digits=3),
               Column("latency_ms", "Latency (ms)", "Latency (ms)", digits=1), Column("fps", "FPS", "FPS", digits=1),
               Column("train_own", "Train (own)", "Train (own)"),
               Column("train_total", "Train (with bases)", "Train (with bases)")]
    rows = []
    for v in comparison.variants:
        c = v.cost
        size = c.get("input_size")
        params = c.get("params")
        own = [r.cost.get("train_seconds") for r in v.results]
        total = [r.cost.get("train_seconds_total") for r in v.results]
        own_mean = float(np.mean(own)) if own and all(t is not None for t in own) else None
        total_mean = float(np.mean(total)) if total and all(t is not None for t in total) else None
        values = {"input": "x".join(map(str, size)) if size else None,
                  "params": params / 1e6 if params is not None else None,
                  "size_mb": params * 4 / 2 ** 20 if params is not None else None,
                  "gmacs": c.get("gmacs"), "latency_ms": c.get("latency_ms"), "fps": c.get("fps"),
                  "train_own": own_mean, "train_total": total_mean}
        rows.append({"name": v.name, "kind": v.kind, "upper_bound": v.upper_bound, "n_seeds": len(v.results),
                     "values": values, "text": {"train_own": _hms(own_mean), "train_total": _hms(total_mean)}})
    device = comparison.info.get("device_name", "?")
    notes = ["Stacking variants: params, GMACs and latency include their base learners (one forward pass of the "
             "whole ensemble). Baselines: the sum over their bases (the averaging itself is free).",
             "Size: fp32 parameters x 4 bytes. GMACs: torch.utils.flop_counter mult-adds at the evaluation input "
             "size. Latency: median of timed batch-1 passes after warm-up.",
             "Train (own): the run's summary.json train_seconds (mean over seeds); Train (with bases): plus the "
             "training of the bases a freeze/finetune ensemble started from (simultaneous: own only). "
             "Baselines: the sum of their bases."]
    return Table(f"Compute on {device}", columns, rows, notes)


# ---------------------------------------------------------------------------------------
# Evaluation: one pass per run

class PredictionStore:
    """Depth maps of the base learners on disk (one .npy per run and image, float32), so the
    baselines and the freeze-mode ensembles reuse them: [1 or 2, h, w] = straight (and the
    prediction on the mirrored image, not flipped back, with flip TTA)."""

    def __init__(self):
        self._dir = tempfile.TemporaryDirectory(prefix="ensemble-compare-")
        self.root = Path(self._dir.name)

    def path(self, key: str, index: int) -> Path:
        return self.root / key / f"{index}.npy"

    def put(self, key: str, index: int, maps: torch.Tensor) -> None:
        self.path(key, index).parent.mkdir(exist_ok=True)
        np.save(self.path(key, index), maps.float().numpy())

    def get(self, key: str, index: int) -> torch.Tensor:
        return torch.from_numpy(np.load(self.path(key, index)))

    def tta(self, key: str, index: int) -> torch.Tensor:
        """[1,h,w] the prediction the metrics score: straight, or the flip-TTA mean."""
        maps = self.get(key, index)
        return maps[:1] if len(maps) == 1 else 0.5 * (maps[:1] + torch.flip(maps[1:2], dims=[-1]))

    def close(self) -> None:
        self._dir.cleanup()


def _collate(samples: list[dict]) -> dict:
    return {"rgb": [s["rgb"] for s in samples], "depth": [s["depth"] for s in samples],
            "name": [s["name"] for s in samples], "index": [s.get("index") for s in samples]}


def _data_identity(cfg_data: dict) -> tuple:
    return tuple(str(cfg_data.get(k)) for k in ("path", "format", "train_list", "test_list", "train_root",
                                                "test_root"))


def _eval_config(run_cfg: dict, data: str | None) -> dict:
    from ensemble_mde.commands.evaluate import _eval_config as with_user_data

    return with_user_data(run_cfg, argparse.Namespace(data=data, overrides=[]))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    from ensemble_mde.profiling import cpu_model

    return f"CPU {cpu_model()}, {torch.get_num_threads()} threads"


def _variant_name(run: RunInfo) -> str:
    if run.kind == "meta":
        from meta_learner.training import variant_parts

        return "SG " + " ".join(variant_parts(run.cfg))
    return str(run.cfg["model"]["name"])


def _train_seconds(run: RunInfo) -> float | None:
    t = run.summary.get("train_seconds")
    return float(t) if t is not None else None


class EvaluationPass:
    """Runs every model once over the split; see `compare_runs`.

    figures: {"indices": [dataset indices], "names", "rgb": [[3,H,W]], "gt": [[H,W]],
    "pred": {run folder: [[H,W] at GT size]}, "weights": {run folder: [[K,H,W]]},
    "weight_names": {run folder: [K names]}}."""

    def __init__(self, runs: list[RunInfo], dataset, *, device: torch.device, flip: bool, eigen_crop: bool,
                 min_depth: float, max_depth: float, figure_images: int, measure: bool, repeats: int,
                 progress=None):
        self.runs, self.dataset, self.device = runs, dataset, device
        self.flip, self.eigen_crop = flip, eigen_crop
        self.min_depth, self.max_depth = min_depth, max_depth
        self.measure, self.repeats = measure, repeats
        self.progress = progress
        self.store = PredictionStore()
        self.store_keys: dict[Path, str] = {}               # base checkpoint -> store key
        n = len(dataset)
        count = min(figure_images, n)
        self.figure_indices = sorted({int(round(i * (n - 1) / max(1, count - 1))) for i in range(count)}) \
            if count else []
        self.figures = {"indices": self.figure_indices, "names": [], "rgb": [], "gt": [], "pred": {}, "weights": {},
                        "weight_names": {}}
        self.image_names: list[str] | None = None

    def _loader(self, batched: bool):
        return torch.utils.data.DataLoader(self.dataset, batch_size=4 if batched else 1, shuffle=False,
                                           num_workers=0, collate_fn=_collate)

    def cached_bases(self, run: RunInfo, input_size) -> list[str] | None:
        """Store keys of a freeze-mode ensemble's bases when all were evaluated at its input size."""
        from ensemble_mde.evaluation import model_input_size

        if run.kind != "meta" or run.cfg["ensemble"]["mode"] != "freeze":
            return None
        keys = []
        for r in run.cfg["ensemble"]["resolved"]:
            key = self.store_keys.get(Path(r["run"]).resolve()) if r.get("run") else None
            base = next((b for b in self.runs if b.checkpoint == Path(r["run"]).resolve()), None) if key else None
            if key is None or base is None or model_input_size(base.cfg) != input_size:
                return None
            keys.append(key)
        return keys

    def predict_run(self, run: RunInfo, *, keep: bool) -> tuple[dict, dict]:
        """(per-image metrics {metric: [N]}, cost) of one run; keep: store its maps for the baselines."""
        from ensemble_mde.evaluation import model_input_size, resize_rgb
        from ensemble_mde.loading import load_any_run
        from ensemble_mde.profiling import count_gmacs, count_params, measure_latency
        from ensemble_mde.speed import prepare_for_inference

        model, cfg = load_any_run(run.path, device=self.device)
        params = count_params(model)  # as trained: before the fast path folds BatchNorm
        prepare_for_inference(model)
        input_size = model_input_size(cfg)
        cached = self.cached_bases(run, input_size)
        key = f"r{len(self.store_keys)}"
        if keep:
            self.store_keys[run.checkpoint] = key
        acc = MetricAccumulator(min_depth=self.min_depth, max_depth=self.max_depth, eigen_crop=self.eigen_crop)
        names = []
        with torch.inference_mode():
            for batch in self._loader(input_size is not None):
                rgb = torch.cat([resize_rgb(x[None], input_size) for x in batch["rgb"]]).to(self.device)
                indices = batch["index"]
                inputs = [None, None]
                if cached is not None:  # [1 or 2, K, h, w] per image: straight (and mirrored) base maps
                    maps = [torch.stack([self.store.get(k, i) for k in cached], dim=1) for i in indices]
                    inputs = [torch.stack([m[0] for m in maps]).to(self.device),
                              torch.stack([m[1] for m in maps]).to(self.device) if self.flip else None]
                feed = iter(inputs)
                outputs = []

                def forward(x):
                    depths = next(feed)
                    out = model(x) if depths is None else model(x, base_depths=depths)
                    outputs.append(out)
                    return out["depth"]

                depth = (flip_tta(forward, rgb) if self.flip else forward(rgb)).float().cpu()
                for j, (i, gt, name) in enumerate(zip(indices, batch["depth"], batch["name"])):
                    acc.update(depth[j], gt, name=name)
                    names.append(name)
                    if keep:
                        maps = [outputs[0]["depth"][j]] + ([outputs[1]["depth"][j]] if self.flip else [])
                        self.store.put(key, i, torch.cat(maps).float().cpu())
                    if i in self.figure_indices:
                        self._keep_figure(run, i, name, depth[j], gt, batch["rgb"][j], outputs[0], j, model)
                if self.progress is not None:
                    self.progress(len(indices))
        self._check_order(names)
        cost = {"input_size": list(input_size) if input_size else list(self.dataset.gt_size()),
                "params": params, "train_seconds": _train_seconds(run)}
        if self.measure:
            size = cost["input_size"]
            cost["gmacs"] = count_gmacs(model, size)
            cost.update(measure_latency(model, size, device=self.device, repeats=self.repeats))
        return per_image_arrays(acc), cost

    def _keep_figure(self, run, index, name, depth, gt, rgb, outputs, j, model) -> None:
        """Keep one figure image: RGB and GT once, this run's depth (and weights) at GT size."""
        f = self.figures
        if name not in f["names"]:
            f["names"].append(str(name))
            f["rgb"].append(rgb.float())
            f["gt"].append(gt[0].float())
        up = F.interpolate(depth[None].float(), size=tuple(gt.shape[-2:]), mode="bilinear", align_corners=False)
        f["pred"].setdefault(str(run.path), []).append(up[0, 0].clamp(self.min_depth, self.max_depth))
        if "weights" in outputs:
            w = F.interpolate(outputs["weights"][j:j + 1].float().cpu(), size=tuple(gt.shape[-2:]), mode="bilinear",
                              align_corners=False)[0]
            f["weights"].setdefault(str(run.path), []).append(w)
            f["weight_names"][str(run.path)] = list(getattr(model, "names", []))

    def _check_order(self, names: list[str]) -> None:
        if self.image_names is None:
            self.image_names = names
        elif names != self.image_names:
            raise DataError("the test split came back in a different order between runs")

    def baseline_metrics(self, combiners: dict, keys: list[str]) -> dict[str, tuple[dict, list]]:
        """{name: (per-image metrics, figure maps)} of averaging baselines over the stored maps of
        the bases `keys` (no model pass): each base's map is upsampled to the GT size, then combined."""
        accs = {name: MetricAccumulator(min_depth=self.min_depth, max_depth=self.max_depth, eigen_crop=self.eigen_crop)
                for name in combiners}
        figures = {name: [] for name in combiners}
        for i, image in enumerate(self.image_names):
            gt = self.dataset[i]["depth"]
            size = tuple(gt.shape[-2:])
            maps = torch.cat([F.interpolate(self.store.tta(k, i)[None], size=size, mode="bilinear",
                                            align_corners=False)[0] for k in keys])[None]
            for name, combine in combiners.items():
                depth = combine(maps, gt[None])
                accs[name].update(depth[0], gt, name=image)
                if i in self.figure_indices:
                    figures[name].append(depth[0, 0].clamp(self.min_depth, self.max_depth))
        return {name: (per_image_arrays(accs[name]), figures[name]) for name in combiners}


def per_image_arrays(acc: MetricAccumulator) -> dict[str, np.ndarray]:
    """{metric: [N] per-image values} of an accumulator, in update order."""
    return {k: np.array([r[k] for r in acc.per_image]) for k in METRIC_KEYS}


def _base_sets(base_runs: list[RunInfo], meta_runs: list[RunInfo], identity) -> list[list[RunInfo]]:
    """The sets of bases the baselines average: each distinct set the meta runs reference;
    with no meta run, one set per seed all base groups share (else each group's first run)."""
    by_checkpoint = {r.checkpoint: r for r in base_runs}
    sets: list[list[RunInfo]] = []
    for m in meta_runs:  # the same bases in another order are the same set (not a second seed)
        members = [by_checkpoint[Path(r["run"]).resolve()] for r in m.cfg["ensemble"]["resolved"] if r.get("run")]
        if members and {r.path for r in members} not in [{r.path for r in s} for s in sets]:
            sets.append(members)
    if sets or not base_runs:
        return sets
    groups: dict[str, list[RunInfo]] = {}
    for r in base_runs:
        groups.setdefault(identity(r), []).append(r)
    common = set.intersection(*({r.seed for r in g} for g in groups.values()))
    if common:
        return [[next(r for r in g if r.seed == s) for g in groups.values()] for s in sorted(common)]
    return [[sorted(g, key=lambda r: r.seed)[0] for g in groups.values()]]


def _load_infos(paths: list[str | Path]) -> list[RunInfo]:
    """The runs asked for plus the base runs their meta runs reference (needed for the baselines)."""
    infos: list[RunInfo] = []
    for p in paths:
        info = read_run(p)
        if info.checkpoint not in {r.checkpoint for r in infos}:
            infos.append(info)
    seen = {r.checkpoint for r in infos}
    for m in [r for r in infos if r.kind == "meta"]:
        for r in m.cfg["ensemble"]["resolved"]:
            if not r.get("run"):
                continue
            path = Path(r["run"]).resolve()
            if path in seen:
                continue
            if not path.is_file():
                raise CheckpointError(f"base {r['name']!r} of meta run {m.path.name} is gone (needed for its "
                                      f"baselines)", path)
            seen.add(path)
            infos.append(read_run(path))
    return infos


def compare_runs(paths: list[str | Path], *, data: str | None = None, split: str = "test", flip: bool = False,
                 baselines=BASELINE_NAMES, bootstrap: int = 0, bootstrap_seed: int = 0, device="auto",
                 measure: bool = True, repeats: int = 10, figure_images: int = 3, progress: bool = False,
                 say=None) -> Comparison:
    """Evaluate the runs in `paths` (+ the bases their meta runs reference) once on `split` of
    `data` (default: the data they were trained on; all must agree) and build the comparison:
    per-image metrics, baselines over the bases, grouping by seed, costs (measure=True:
    GMACs and latency on `device`), the paired bootstrap (bootstrap = resamples, 0 = none)."""
    from ensemble_mde.data import build_dataset, eigen_crop_default
    from ensemble_mde.device import resolve_device
    from ensemble_mde.progress import task_progress

    say = say or (lambda *a: None)
    unknown = [b for b in baselines if b not in BASELINE_NAMES]
    if unknown:
        raise ConfigError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINE_NAMES)}", "--baselines")
    infos = _load_infos(paths)
    if not infos:
        raise ConfigError("no run to compare", "runs")
    for r in infos:
        if r.log_skipped:
            lines = ", ".join(map(str, r.log_skipped[:5])) + (" ..." if len(r.log_skipped) > 5 else "")
            say(f"warning: {r.path / 'metrics.jsonl'}: skipped line(s) {lines}, not valid JSON (a half-written "
                "line is what a crash leaves)")
    trained = [r for r in infos if has_training_data(r.cfg)]  # imported runs were trained on no data of ours
    if data is None:
        identities = {}
        for r in trained:
            identities.setdefault(_data_identity(r.cfg["data"]), []).append(r.path.name)
        if len(identities) > 1:
            listing = "; ".join(f"{ident[0]} ({', '.join(names)})" for ident, names in identities.items())
            raise ConfigError(f"the runs were trained on different data: {listing}; pass --data PATH", "--data")
    device = resolve_device(device)
    eval_cfg = _eval_config(copy.deepcopy((trained or infos)[0].cfg), data)
    dataset = build_dataset(eval_cfg, split, augment=False)
    eigen = eigen_crop_default(eval_cfg["data"], dataset)
    min_depth, max_depth = float(eval_cfg["data"]["min_depth"]), float(eval_cfg["data"]["max_depth"])

    base_runs = [r for r in infos if r.kind == "base"]
    meta_runs = [r for r in infos if r.kind == "meta"]
    base_ids = {r.checkpoint: config_identity(r.cfg) for r in base_runs}

    def base_identity(entry: dict):
        path = Path(entry["run"]).resolve() if entry.get("run") else None
        return base_ids.get(path, json.dumps(entry.get("model"), sort_keys=True))

    def identity(run: RunInfo) -> str:
        return base_ids[run.checkpoint] if run.kind == "base" else config_identity(run.cfg, base_identity)

    sets = _base_sets(base_runs, meta_runs, identity)
    keep = {r.checkpoint for s in sets for r in s}
    measured: dict[str, dict] = {}     # group -> the cost measured on its first run

    passes = EvaluationPass(base_runs + meta_runs, dataset, device=device, flip=flip, eigen_crop=eigen,
                            min_depth=min_depth, max_depth=max_depth, figure_images=figure_images,
                            measure=measure, repeats=repeats)
    results: list[RunResult] = []
    train_seconds = {r.checkpoint: _train_seconds(r) for r in base_runs}
    base_order = {r.checkpoint: i for i, r in enumerate(r for s in sets for r in s)}
    try:
        with task_progress(progress) as bar:
            task = bar.add_task("compare", total=len(dataset) * (len(base_runs) + len(meta_runs)))
            passes.progress = lambda n: bar.advance(task, n)
            for run in base_runs + meta_runs:
                bar.update(task, description=f"predict {run.path.name}")
                group = identity(run)
                passes.measure = measure and group not in measured  # once per group of seeds
                per_image, cost = passes.predict_run(run, keep=run.checkpoint in keep)
                if measure:
                    measured.setdefault(group, cost)
                    cost.update({k: measured[group][k] for k in ("gmacs", "latency_ms", "fps")})
                if run.kind == "meta":
                    bases = [Path(r["run"]).resolve() for r in run.cfg["ensemble"]["resolved"] if r.get("run")]
                    before = [train_seconds.get(b) for b in bases]
                    own = cost["train_seconds"]
                    if run.cfg["ensemble"]["mode"] == "simultaneous":
                        cost["train_seconds_total"] = own
                    elif own is not None and all(t is not None for t in before):
                        cost["train_seconds_total"] = own + sum(before)
                    order = (INPUT_ORDER.get(run.cfg["meta"]["inputs"], 9), MODE_ORDER.get(
                        run.cfg["ensemble"]["mode"], 9))
                else:
                    cost["train_seconds_total"] = cost["train_seconds"]
                    order = (base_order.get(run.checkpoint, len(base_order)),)
                results.append(RunResult(_variant_name(run), run.kind, str(run.path), run.seed, identity(run),
                                         per_image, order=order, cost=cost))
            bar.update(task, description="baselines")
            figures_baseline = _baselines(passes, sets, results, baselines, identity, say)
    finally:
        passes.store.close()
    variants = group_by_seed(results)
    figures = passes.figures
    figures["baseline"] = figures_baseline
    data_name = "/".join(Path(eval_cfg["data"]["path"]).parts[-2:])
    info = {"data": eval_cfg["data"]["path"], "split": split,
            "data_name": f"synthetic {data_name}" if dataset.is_synthetic else data_name,
            "n_images": len(dataset), "eigen_crop": eigen, "flip": flip, "device": str(device),
            "device_name": device_name(device), "max_depth": max_depth, "min_depth": min_depth}
    comparison = Comparison(variants, passes.image_names, info, figures=figures, run_infos=infos,
                            reference=next((v.name for v in variants if v.kind == "baseline"
                                            and v.results[0].run.startswith("mean:")), None))
    if bootstrap:
        comparison.run_bootstrap(bootstrap, bootstrap_seed)
    return comparison


def _baselines(passes: EvaluationPass, sets, results: list[RunResult], names, identity, say) -> list:
    """Append baseline results for every base set to `results` (sets of equal composition
    are seeds of one baseline); returns the first set's mean-baseline maps of the figure images."""
    from meta_learner import baselines

    by_run = {r.run: r for r in results}
    compositions = [tuple(sorted(identity(r) for r in s)) for s in sets]
    several = len(set(compositions)) > 1
    figure = []
    for s, composition in zip(sets, compositions):
        members = [by_run[str(r.path)] for r in s]
        combiners = {}
        for kind in names:
            if kind == "weighted":
                val_rmse = [validation_rmse(r) for r in s]
                if any(v is None for v in val_rmse):
                    missing = [r.path.name for r, v in zip(s, val_rmse) if v is None]
                    say(f"weighted baseline skipped: no validation RMSE for {', '.join(missing)}")
                    continue
                combiners[kind] = baselines.WeightedEnsemble(val_rmse)
            elif baselines.BASELINES[kind].needs_gt:
                combiners[kind] = baselines.BASELINES[kind](passes.min_depth, passes.max_depth)
            else:
                combiners[kind] = baselines.BASELINES[kind]()
        scored = passes.baseline_metrics(combiners, [passes.store_keys[r.checkpoint] for r in s])
        cost = _sum_costs([m.cost for m in members])
        learners = "+".join(m.name for m in members)
        for kind, (per_image, maps) in scored.items():
            if kind == "mean" and not figure:
                figure = maps
            results.append(RunResult(BASELINE_LABELS[kind] + (f" ({learners})" if several else ""), "baseline",
                                     f"{kind}:" + "+".join(m.run for m in members), min(m.seed for m in members),
                                     f"{kind}|{composition}", per_image,
                                     upper_bound=baselines.BASELINES[kind].upper_bound,
                                     order=(BASELINE_NAMES.index(kind),), cost=dict(cost)))
    return figure


def _sum_costs(costs: list[dict]) -> dict:
    out = {}
    for key in ("params", "gmacs", "latency_ms", "train_seconds", "train_seconds_total"):
        values = [c.get(key) for c in costs]
        out[key] = sum(values) if values and all(v is not None for v in values) else None
    out["fps"] = 1000.0 / out["latency_ms"] if out.get("latency_ms") else None
    sizes = {tuple(c["input_size"]) for c in costs if c.get("input_size")}
    out["input_size"] = list(sizes.pop()) if len(sizes) == 1 else None
    return out


# ---------------------------------------------------------------------------------------
# Output files

def write_tables(comparison: Comparison, out: str | Path, *, silog: bool = False) -> list[Path]:
    """accuracy.* and compute.* in every format (txt, md, csv, tex, json), per_image.csv and
    bootstrap.json (with a bootstrap); written atomically. Returns the paths."""
    from ensemble_mde.io import atomic_write_json, atomic_write_text

    out = Path(out)
    written = []
    for stem, table in (("accuracy", accuracy_table(comparison, silog=silog)), ("compute", compute_table(comparison))):
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
    return written
