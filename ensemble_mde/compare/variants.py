"""The runs a comparison reads and its rows: RunInfo (a run folder read), RunResult (one
run's per-image metrics and cost), Variant (runs that differ only by seed), their identity."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ensemble_mde import config as config_mod
from ensemble_mde import runs as runs_mod
from ensemble_mde.errors import ConfigError

KIND_ORDER = {"base": 0, "baseline": 1, "meta": 2}
# Config keys that do not change what a run learns: runs differing only here are seeds of one variant.
NOT_PART_OF_VARIANT = ("run.seed", "run.name", "run.runs_dir", "run.device", "data.workers",
                       "ensemble.bases", "ensemble.cache_dir")


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
    """What `compare` compares when it is given no run: the run folders under runs_dir that
    finished training (`runs.finished_runs`) or were imported (official weights: best.pt and
    no training data, so no summary.json either), sorted by name."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise ConfigError("runs folder not found (--runs-dir)", root)
    imported = [p.parent for p in root.glob("*/best.pt") if _imported(runs_mod.RunFolder(p.parent))]
    found = sorted([*runs_mod.finished_runs(root), *imported])
    if not found:
        raise ConfigError("no finished or imported run (summary.json + best.pt, or an import-weights folder) in "
                          "this folder; pass run folders", root)
    return found


def _imported(run: runs_mod.RunFolder) -> bool:
    return not run.is_finished() and run.config_file.is_file() and not has_training_data(run.read_config())


def read_run(path: str | Path) -> RunInfo:
    """A run folder (or a checkpoint file inside one) -> RunInfo; the config (with its record)
    is the folder's, else the checkpoint's."""
    checkpoint = runs_mod.resolve_checkpoint(path)
    folder = runs_mod.RunFolder(checkpoint.parent)
    cfg = folder.read_config() if folder.config_file.is_file() else runs_mod.read_checkpoint(checkpoint)["config"]
    summary = folder.summary() if folder.summary_file.is_file() else {}
    log, skipped = folder.log_entries()
    return RunInfo(folder.path.resolve(), cfg, checkpoint.resolve(), summary, log, skipped)


def has_training_data(cfg: dict) -> bool:
    """False for a run that was imported (official weights): it names no dataset of ours."""
    return runs_mod.data_view(cfg)["data"].get("path") is not None


def config_identity(cfg: dict, base_identity=None) -> str:
    """Canonical JSON of what makes a variant: the config without NOT_PART_OF_VARIANT keys.
    A meta run's bases enter by `base_identity(entry of its record's bases)` (default: their model section),
    not by checkpoint path or hash, so meta runs over the seed-s bases group across s."""
    c = copy.deepcopy(cfg)
    for key in NOT_PART_OF_VARIANT:
        config_mod.drop_key(c, key)
    record = c.pop(runs_mod.RECORD, {}) or {}
    if c.get("kind") == "meta":
        c["ensemble"]["bases_identity"] = [base_identity(r) if base_identity else r.get("model")
                                           for r in record.get("bases", [])]
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
    reference_group: str | None = None         # group of the baseline it is compared with (its own bases' mean)
    weights: dict | None = None                # softmax ensembles: {"pixel_std": [N], "mean": [N,K], "names": [K]}
    sparsification: dict | None = None         # its uncertainty's (uncertainty.SparsificationAccumulator.compute())


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
