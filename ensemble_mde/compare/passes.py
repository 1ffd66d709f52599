"""One pass of every run of a comparison over the split (`EvaluationPass`): each model once
through ensemble_mde.evaluation `predictions`, the bases' maps kept on disk (`PredictionStore`)
for the averaging baselines and the freeze-mode ensembles, the figure images, the weight
statistics and, with uncertainty, the sparsification of each ensemble's spread."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ensemble_mde import runs as runs_mod
from ensemble_mde.compare.uncertainty import SpreadScores, baseline_spread, prediction_spread
from ensemble_mde.compare.variants import RunInfo
from ensemble_mde.errors import DataError
from ensemble_mde.evaluation import predictions
from ensemble_mde.metrics import METRIC_KEYS, MetricAccumulator


class PredictionStore:
    """Depth maps of the base learners on disk (one .npy per run and image, float32), so the
    baselines and the freeze-mode ensembles reuse them: [1 or 2, h, w] = straight (and the
    prediction on the mirrored image, not flipped back, with flip TTA). Unlike the training
    cache (meta_learner.cache: frame-size maps of the un-augmented training frames, kept
    across runs), these are one comparison's test maps, with their mirrored twins."""

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

    def views(self, key: str, index: int) -> torch.Tensor:
        """[1 or 2,h,w]: the straight prediction (and, with flip TTA, the mirrored one flipped back)."""
        maps = self.get(key, index)
        return torch.cat([maps[:1], torch.flip(maps[1:2], dims=[-1])])

    def tta(self, key: str, index: int) -> torch.Tensor:
        """[1,h,w] the prediction the metrics score: straight, or the flip-TTA mean."""
        return self.views(key, index).mean(dim=0, keepdim=True)

    def close(self) -> None:
        self._dir.cleanup()


def record_checkpoint(entry: dict) -> Path | None:
    """The one checkpoint a meta record's base entry is (None: a fresh base, or a mean of members)."""
    return Path(entry["run"]).resolve() if entry.get("run") and not entry.get("members") else None


def train_seconds_of(summary: dict) -> float | None:
    t = summary.get("train_seconds")
    return float(t) if t is not None else None


def _train_seconds(run: RunInfo) -> float | None:
    return train_seconds_of(run.summary)


class EvaluationPass:
    """Runs every model once over the split; see `compare_runs`.

    figures: {"indices": [dataset indices], "names", "rgb": [[3,H,W]], "gt": [[H,W]],
    "pred": {run folder: [[H,W] at GT size]}, "weights": {run folder: [[K,H,W]]},
    "weight_names": {run folder: [K names]}}. uncertainty: score each ensemble's spread
    (`sparsification`: run folder -> SparsificationAccumulator.compute(), or None)."""

    def __init__(self, runs: list[RunInfo], dataset, *, device: torch.device, flip: bool, eigen_crop: bool,
                 min_depth: float, max_depth: float, figure_images: int, measure: bool, repeats: int,
                 progress=None, uncertainty: bool = False):
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
        self.weight_stats: dict[str, dict] = {}   # run folder -> per-image weight statistics (weight_stats)
        self.uncertainty = uncertainty
        self.sparsification: dict[str, dict | None] = {}

    def spread_scores(self) -> SpreadScores:
        return SpreadScores(min_depth=self.min_depth, max_depth=self.max_depth, eigen_crop=self.eigen_crop)

    def cached_bases(self, run: RunInfo, input_size) -> list[str] | None:
        """Store keys of a freeze-mode ensemble's bases when all were evaluated at its input size."""
        from ensemble_mde.runs import model_input_size

        if run.kind != "meta" or run.cfg["ensemble"]["mode"] != "freeze":
            return None
        keys = []
        for r in run.cfg[runs_mod.RECORD]["bases"]:
            checkpoint = record_checkpoint(r)
            key = self.store_keys.get(checkpoint) if checkpoint else None
            base = next((b for b in self.runs if b.checkpoint == checkpoint), None) if key else None
            if key is None or base is None or model_input_size(base.cfg) != input_size:
                return None
            keys.append(key)
        return keys

    def predict_run(self, run: RunInfo, *, keep: bool) -> tuple[dict, dict]:
        """(per-image metrics {metric: [N]}, cost) of one run; keep: store its maps for the baselines."""
        from ensemble_mde.loading import load_any_run
        from ensemble_mde.profiling import count_gmacs, count_params, measure_latency
        from ensemble_mde.runs import model_input_size
        from ensemble_mde.speed import prepare_for_inference

        model, cfg = load_any_run(run.path, device=self.device)
        params = count_params(model)  # as trained: before the fast path folds BatchNorm
        prepare_for_inference(model)
        input_size = model_input_size(cfg)
        cached = self.cached_bases(run, input_size)
        key = f"r{len(self.store_keys)}"
        if keep:
            self.store_keys[run.checkpoint] = key

        def stored_bases(indices):  # [B,K,h,w] straight (and mirrored) base maps of these images
            maps = [torch.stack([self.store.get(k, i) for k in cached], dim=1) for i in indices]
            straight = torch.stack([m[0] for m in maps]).to(self.device)
            return straight, torch.stack([m[1] for m in maps]).to(self.device) if self.flip else None

        acc = MetricAccumulator(min_depth=self.min_depth, max_depth=self.max_depth, eigen_crop=self.eigen_crop)
        names, stats = [], []
        spread = self.spread_scores() if self.uncertainty else None
        for p in predictions(model, self.dataset, device=self.device, input_size=input_size, flip=self.flip,
                             cached_bases=stored_bases if cached is not None else None):
            acc.update(p.depth, p.gt, name=p.name)
            sigma = prediction_spread(p) if spread is not None else None
            if sigma is not None:
                spread.add(p.depth, sigma, p.gt, name=p.name)
            names.append(p.name)
            if keep:
                maps = [p.outputs["depth"]] + ([p.mirrored["depth"]] if self.flip else [])
                self.store.put(key, p.index, torch.cat(maps).float().cpu())
            if "weights" in p.outputs:
                stats.append(weight_stats(p.outputs["weights"]))
            if p.index in self.figure_indices:
                self._keep_figure(run, p, model)
            if self.progress is not None:
                self.progress(1)
        self._check_order(names)
        if stats:
            self.weight_stats[str(run.path)] = {"pixel_std": np.array([st[0] for st in stats]),
                                                "mean": np.stack([st[1] for st in stats]),
                                                "names": list(getattr(model, "names", []))}
        if spread is not None:
            self.sparsification[str(run.path)] = spread.compute()
        cost = {"input_size": list(input_size) if input_size else list(self.dataset.gt_size()),
                "params": params, "train_seconds": _train_seconds(run)}
        if self.measure:
            size = cost["input_size"]
            cost["gmacs"] = count_gmacs(model, size)
            cost.update(measure_latency(model, size, device=self.device, repeats=self.repeats))
        return per_image_arrays(acc), cost

    def _keep_figure(self, run: RunInfo, p, model) -> None:
        """Keep one figure image (a `Prediction`): RGB and GT once, this run's depth (and
        weights) at GT size."""
        f = self.figures
        if p.name not in f["names"]:
            f["names"].append(str(p.name))
            f["rgb"].append(p.rgb.float())
            f["gt"].append(p.gt[0].float())
        size = tuple(p.gt.shape[-2:])
        up = upsample(p.depth[None].float(), size)
        f["pred"].setdefault(str(run.path), []).append(up[0, 0].clamp(self.min_depth, self.max_depth))
        if "weights" in p.outputs:
            w = upsample(p.outputs["weights"][None].float().cpu(), size)[0]
            f["weights"].setdefault(str(run.path), []).append(w)
            f["weight_names"][str(run.path)] = list(getattr(model, "names", []))

    def _check_order(self, names: list[str]) -> None:
        if self.image_names is None:
            self.image_names = names
        elif names != self.image_names:
            raise DataError("the test split came back in a different order between runs")

    def baseline_metrics(self, combiners: dict, keys: list[str]) -> dict[str, tuple[dict, list, dict | None]]:
        """{name: (per-image metrics, figure maps, sparsification of its spread or None)} of
        averaging baselines over the stored maps of the bases `keys` (no model pass): each base's
        map is upsampled to the GT size, then combined."""
        accs = {name: MetricAccumulator(min_depth=self.min_depth, max_depth=self.max_depth, eigen_crop=self.eigen_crop)
                for name in combiners}
        figures = {name: [] for name in combiners}
        spreads = {name: self.spread_scores() for name in combiners} if self.uncertainty else {}
        for i, image in enumerate(self.image_names):
            gt = self.dataset[i]["depth"]
            size = tuple(gt.shape[-2:])
            maps = torch.cat([upsample(self.store.tta(k, i)[None], size) for k in keys], dim=1)
            # the convex oracle clips the GT into what a blend made before upsampling and TTA can reach
            hull = convex_hull([self.store.views(k, i) for k in keys], size) if "convex" in combiners else None
            views = [upsample(self.store.views(k, i)[None], size)[0] for k in keys] if spreads else None
            for name, combine in combiners.items():
                depth = combine(hull if name == "convex" else maps, gt[None])
                accs[name].update(depth[0], gt, name=image)
                sigma = baseline_spread(combine, views, depth) if spreads else None
                if sigma is not None:
                    spreads[name].add(depth[0], sigma[0], gt, name=image)
                if i in self.figure_indices:
                    figures[name].append(depth[0, 0].clamp(self.min_depth, self.max_depth))
        return {name: (per_image_arrays(accs[name]), figures[name], spreads[name].compute() if spreads else None)
                for name in combiners}


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B,C,h,w] -> [B,C,*size], bilinear as the metrics resize a prediction to its GT."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def convex_hull(views: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """[1,2,H,W]: per pixel the lowest and highest depth at `size` of any per-pixel convex blend
    of `views` (each base's [V,h,w]: straight, with flip TTA also mirrored back) made on their
    grid, as a stacked ensemble's is: a flip-TTA mean of two blends is a blend of both views, and
    bilinear upsampling is convex. Maps of different sizes are upsampled first."""
    if len({tuple(v.shape[-2:]) for v in views}) > 1:
        views = [upsample(v[None], size)[0] for v in views]
    maps = torch.cat(views)[None]
    return upsample(torch.cat([maps.amin(dim=1, keepdim=True), maps.amax(dim=1, keepdim=True)], dim=1), size)


def weight_stats(weights: torch.Tensor) -> tuple[float, np.ndarray]:
    """(per-pixel std of the weight maps over the image, averaged over learners; the mean
    weight of each learner [K]) of one image's weights [K,H,W]."""
    w = weights.float().flatten(1)
    return float(w.std(dim=1, unbiased=False).mean()), w.mean(dim=1).cpu().numpy()


def per_image_arrays(acc: MetricAccumulator) -> dict[str, np.ndarray]:
    """{metric: [N] per-image values} of an accumulator, in update order."""
    return {k: np.array([r[k] for r in acc.per_image]) for k in METRIC_KEYS}
