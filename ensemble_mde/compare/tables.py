"""The comparison (variants, per-image metrics, costs, bootstrap) and its tables: columns,
rows, ranking marks; accuracy, significance and compute."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ensemble_mde.compare.stats import format_p, paired_bootstrap
from ensemble_mde.compare.variants import RunInfo, Variant
from ensemble_mde.errors import ConfigError
from ensemble_mde.metrics import HIGHER_IS_BETTER, METRIC_KEYS, crop_label

ORACLE_NOTE = ("† Upper bounds that look at the ground truth (not ranked). Oracle (selection): per pixel the base "
               "nearest the GT; no single base has a smaller per-pixel absolute error, but it bounds neither blends "
               "nor log or ratio metrics. Oracle (convex blend): per pixel the GT clipped into the range of the "
               "bases' depths (with flip TTA, of their straight and mirrored maps); no base, average or freeze-mode "
               "softmax ensemble of these bases (each a per-pixel convex blend of their maps) beats it on a pixel. "
               "It does not bound a finetuned or simultaneous ensemble (whose bases are retrained) nor the relaxed "
               "head (which predicts depth itself).")
# (metric key, header, LaTeX header) in the column order of the SG study's tables.
METRIC_COLUMNS = (
    ("d1", "δ<1.25", r"$\delta<1.25$"), ("d2", "δ<1.25²", r"$\delta<1.25^2$"),
    ("d3", "δ<1.25³", r"$\delta<1.25^3$"), ("abs_rel", "REL", "REL"), ("sq_rel", "Sq REL", "Sq REL"),
    ("rmse", "RMSE", "RMSE"), ("rmse_log", "RMSE log", "RMSE log"), ("log10", "log10", r"$\log_{10}$"),
    ("silog", "SILog", "SILog"),
)

LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "†": r"$^\dagger$", "±": r"$\pm$", "δ": r"$\delta$", "Δ": r"$\Delta$", "—": "--",
                  "↑": r"$\uparrow$", "↓": r"$\downarrow$", "²": r"$^2$", "³": r"$^3$", "<": r"$<$",
                  ">": r"$>$", "≤": r"$\le$", "≥": r"$\ge$", "−": "-", "×": r"$\times$", "…": r"\ldots{}"}


def latex_escape(text: str) -> str:
    """`text` as LaTeX source in plain ASCII (an engine without unicode input reads it)."""
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in text)


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


def row_label(row: dict) -> str:
    return row["name"] + ("†" if row.get("upper_bound") else "")



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
    references: dict[str, str] = field(default_factory=dict)  # variant -> the mean baseline of its own bases

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def reference_of(self, name: str) -> str:
        """The variant `name` is compared with: the mean baseline of its own bases (a stacked
        ensemble), else the first mean baseline."""
        return self.references.get(name, self.reference)

    @property
    def own_references(self) -> bool:
        """True when some variant is compared with another mean baseline than the first."""
        return any(ref != self.reference for ref in self.references.values())

    def run_bootstrap(self, resamples: int, seed: int = 0) -> None:
        """Each variant minus its reference (`reference_of`), paired over test images; each
        entry holds "reference"."""
        if self.reference is None:
            raise ConfigError("the bootstrap compares with the mean baseline; add 'mean' to --baselines",
                              "--bootstrap")
        values = {}
        self.bootstrap = {}
        for v in self.variants:
            ref = self.reference_of(v.name)
            if v.name == ref or (v.kind == "baseline" and v.name in self.references.values()):
                continue  # a reference is not compared (with itself, or one set's average with another's)
            if ref not in values:
                values[ref] = {k: self.variant(ref).image_values(k) for k in METRIC_KEYS}
            b = paired_bootstrap({k: v.image_values(k) for k in METRIC_KEYS}, values[ref], resamples=resamples,
                                 seed=seed)
            self.bootstrap[v.name] = {**b, "reference": ref}
        self.bootstrap_settings = {"resamples": int(resamples), "seed": int(seed), "reference": self.reference,
                                   "own_references": self.own_references, "confidence": 0.95}


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
        against = "own Baseline" if comparison.own_references else "Baseline"
        columns.append(Column("delta", f"Δ {label} vs {against} [95% CI], p",
                              rf"$\Delta$ {latex_escape(label)} vs {against} [95\% CI], $p$"))
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
             f"{n} images{', ' + crop_label(info['eigen_crop']) if info.get('eigen_crop') else ''}"
             f"{', flip TTA' if info.get('flip') else ''})")
    return mark_ranks(Table(title, columns, rows, notes))


def _bootstrap_note(comparison: Comparison) -> str:
    s = comparison.bootstrap_settings
    against = (f"the mean baseline of its own bases (else {s['reference']})" if s.get("own_references")
               else s["reference"])
    return (f"Δ: paired bootstrap over test images of the variant minus {against} ({s['resamples']} "
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
    against = "each variant's own average" if comparison.own_references else comparison.reference
    columns.insert(0, Column("reference", "Against", "Against"))
    for row, v in zip(rows, [v for v in comparison.variants if v.name in comparison.bootstrap]):
        row["values"]["reference"] = comparison.bootstrap[v.name]["reference"]
    return Table(f"Paired bootstrap against {against}", columns, rows, [_bootstrap_note(comparison)])


def weights_table(comparison: Comparison) -> Table | None:
    """How per-pixel the softmax ensembles' weights are: per image, the std of each weight
    map over its pixels, averaged over learners, then over images (and seeds); and each
    learner's mean weight. None when no variant has weight maps."""
    columns = [Column("pixel_std", "Per-pixel W std", "Per-pixel $W$ std", digits=3),
               Column("mean_w", "Mean W per base", "Mean $W$ per base")]
    rows = []
    for v in comparison.variants:
        stats = [r.weights for r in v.results if r.weights is not None]
        if not stats:
            continue
        pixel_std = float(np.mean([st["pixel_std"].mean() for st in stats]))
        means = np.mean([st["mean"].mean(axis=0) for st in stats], axis=0)
        text = ", ".join(f"{name} {m:.2f}" for name, m in zip(stats[0]["names"], means))
        rows.append({"name": v.name, "kind": v.kind, "upper_bound": False, "n_seeds": len(v.results),
                     "values": {"pixel_std": pixel_std, "mean_w": text}, "text": {}})
    if not rows:
        return None
    return Table("Per-pixel weights (softmax heads)", columns, rows,
                 ["Per-pixel W std: for each test image the standard deviation of each learner's weight map over "
                  "its pixels, averaged over learners, then over images and seeds. 0 = one global weighting; the "
                  "relaxed head has no weights."])


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
