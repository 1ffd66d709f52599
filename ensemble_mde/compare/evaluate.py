"""The evaluation behind a comparison: every run once over the split (ensemble_mde.evaluation
`predictions`), the bases' maps stored for the averaging baselines and the freeze-mode
ensembles, then the baselines, the grouping by seed and the bootstrap; with uncertainty, the
sparsification of each ensemble's spread in the same pass (compare.uncertainty)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ensemble_mde.compare.tables import Comparison
from ensemble_mde.compare.uncertainty import SpreadScores, baseline_spread, prediction_spread
from ensemble_mde.compare.variants import (RunInfo, RunResult, config_identity, group_by_seed, has_training_data,
                                           read_run, validation_rmse)
from ensemble_mde import runs as runs_mod
from ensemble_mde.errors import CheckpointError, ConfigError, DataError
from ensemble_mde.evaluation import evaluation_config, predictions
from ensemble_mde.metrics import METRIC_KEYS, MetricAccumulator
from ensemble_mde.training.sets import read_set, set_of_run

BASELINE_NAMES = ("mean", "median", "weighted", "oracle", "convex")
BASELINE_LABELS = {"mean": "Baseline (mean)", "median": "Median", "weighted": "Weighted (1/val RMSE)",
                   "oracle": "Oracle (selection)", "convex": "Oracle (convex blend)"}
INPUT_ORDER = {"rgb": 0, "d": 1, "rgb+d": 2}
MODE_ORDER = {"freeze": 0, "finetune": 1, "simultaneous": 2}



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


def data_identity(cfg: dict) -> tuple:
    """What names the dataset a run trained on (a meta run: its record's data when it named none)."""
    data = runs_mod.data_view(cfg)["data"]
    return tuple(str(data.get(k)) for k in ("path", "format", "train_list", "test_list", "train_root", "test_root"))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    from ensemble_mde.profiling import cpu_model

    return f"CPU {cpu_model()}, {torch.get_num_threads()} threads"


def record_checkpoint(entry: dict) -> Path | None:
    """The one checkpoint a meta record's base entry is (None: a fresh base, or a mean of members)."""
    return Path(entry["run"]).resolve() if entry.get("run") and not entry.get("members") else None


def _variant_name(run: RunInfo) -> str:
    """A base: its learner, with its set ([set] for a seed set, whose members are one row, else
    [set/member]); a meta run: "SG" and its variant, with the set whose members it stacks."""
    if run.kind == "meta":
        folders = [Path(r["set"]["folder"]).name for r in run.cfg[runs_mod.RECORD]["bases"] if r.get("set")]
        homogeneous = sorted({f for f in folders if folders.count(f) > 1})
        return "SG " + " ".join(runs_mod.meta_variant(run.cfg)) + (f" [{'+'.join(homogeneous)}]" if homogeneous else "")
    name = str(run.cfg["model"]["name"])
    place = _set_place(run)
    return f"{name} [{place}]" if place else name


def _set_place(run: RunInfo, always_member: bool = False) -> str | None:
    """Where a set member sits: "set" for a member of a seed set (its seeds are one variant),
    else (or always_member) "set/member"; None for a lone run."""
    member = set_of_run(run.path)
    if member is None:
        return None
    folder, name, info = member
    return folder if info["kind"] == "seeds" and not always_member else f"{folder}/{name}"


def _set_identity(run: RunInfo) -> str:
    """"" for a lone run; for a set member its place in its set (`_set_place`)."""
    place = _set_place(run)
    return f"|set {place}" if place else ""


def _set_label(members: list[RunInfo], names: list[str]) -> str:
    """What a baseline averages: [set] when it is all members of one set, else each base
    (a set member as set/member)."""
    places = [_set_place(r, always_member=True) for r in members]
    if len({r.path.parent for r in members}) == 1 and all(places):
        return f"[{members[0].path.parent.name}]"
    return "+".join(place or name for place, name in zip(places, names))


def _checkpoint_seconds(path: Path) -> float | None:
    """train_seconds of the run a checkpoint belongs to (its summary.json), None if unknown."""
    folder = runs_mod.RunFolder(path.parent)
    return _train_seconds_of(folder.summary()) if folder.summary_file.is_file() else None


def _train_seconds_of(summary: dict) -> float | None:
    t = summary.get("train_seconds")
    return float(t) if t is not None else None


def _train_seconds(run: RunInfo) -> float | None:
    return _train_seconds_of(run.summary)


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


def _base_sets(base_runs: list[RunInfo], meta_runs: list[RunInfo], identity) -> list[list[RunInfo]]:
    """The sets of bases the baselines average: each distinct set the meta runs reference;
    with no meta run, one set per seed all base groups share (else each group's first run)."""
    by_checkpoint = {r.checkpoint: r for r in base_runs}
    sets: list[list[RunInfo]] = []
    for m in meta_runs:  # the same bases in another order are the same set (not a second seed)
        members = _meta_bases(m, by_checkpoint)
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


def composition_of(bases: list[RunInfo], identity) -> tuple:
    """What a set of bases is made of, order aside: their sorted variant identities."""
    return tuple(sorted(identity(r) for r in bases))


def baseline_group(kind: str, bases: list[RunInfo], identity) -> str:
    """The group of the `kind` baseline over `bases` (equal compositions are seeds of one baseline)."""
    return f"{kind}|{composition_of(bases, identity)!r}"


def _meta_bases(meta: RunInfo, by_checkpoint: dict) -> list[RunInfo]:
    """The base runs a meta run stacks, those that are single checkpoints (not fresh, not a mean of members)."""
    checkpoints = [record_checkpoint(r) for r in meta.cfg[runs_mod.RECORD]["bases"]]
    return [by_checkpoint[c] for c in checkpoints if c is not None]


def _load_infos(paths: list[str | Path]) -> list[RunInfo]:
    """The runs asked for (a set folder: its members) plus the base runs their meta runs
    reference (needed for the baselines)."""
    from ensemble_mde.training.sets import member_runs

    infos: list[RunInfo] = []
    expanded = [m for p in paths for m in (member_runs(p) if read_set(p) is not None else [p])]
    for p in expanded:
        info = read_run(p)
        if info.checkpoint not in {r.checkpoint for r in infos}:
            infos.append(info)
    seen = {r.checkpoint for r in infos}
    for m in [r for r in infos if r.kind == "meta"]:
        for r in m.cfg[runs_mod.RECORD]["bases"]:
            path = record_checkpoint(r)
            if path is None or path in seen:
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
                 uncertainty: bool = False, say=None) -> Comparison:
    """Evaluate the runs in `paths` (+ the bases their meta runs reference) once on `split` of
    `data` (default: the data they were trained on; all must agree) and build the comparison:
    per-image metrics, baselines over the bases, grouping by seed, costs (measure=True:
    GMACs and latency on `device`), the paired bootstrap (bootstrap = resamples, 0 = none),
    with uncertainty the sparsification of every ensemble's spread (compare.uncertainty)."""
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
            say(f"warning: {r.path / 'metrics.jsonl'}: skipped line(s) {lines}, not a valid log record (a "
                "half-written line is what a crash leaves)")
    trained = [r for r in infos if has_training_data(r.cfg)]  # imported runs were trained on no data of ours
    if data is None:
        identities = {}
        for r in trained:
            identities.setdefault(data_identity(r.cfg), []).append(r.path.name)
        if len(identities) > 1:
            listing = "; ".join(f"{ident[0]} ({', '.join(names)})" for ident, names in identities.items())
            raise ConfigError(f"the runs were trained on different data: {listing}; pass --data PATH", "--data")
    device = resolve_device(device)
    eval_cfg = evaluation_config((trained or infos)[0].cfg, data=data)
    dataset = build_dataset(eval_cfg, split, augment=False)
    eigen = eigen_crop_default(eval_cfg["data"], dataset)
    min_depth, max_depth = float(eval_cfg["data"]["min_depth"]), float(eval_cfg["data"]["max_depth"])

    base_runs = [r for r in infos if r.kind == "base"]
    meta_runs = [r for r in infos if r.kind == "meta"]
    # a set's members are variants of their set: the SAME set's seeds are one row, not one with
    # another set's (or a lone run's) equal config
    base_ids = {r.checkpoint: config_identity(r.cfg) + _set_identity(r) for r in base_runs}

    def base_identity(entry: dict):
        return base_ids.get(record_checkpoint(entry), json.dumps(entry.get("model"), sort_keys=True))

    def identity(run: RunInfo) -> str:
        return base_ids[run.checkpoint] if run.kind == "base" else config_identity(run.cfg, base_identity)

    sets = _base_sets(base_runs, meta_runs, identity)
    keep = {r.checkpoint for s in sets for r in s}
    measured: dict[str, dict] = {}     # group -> the cost measured on its first run

    passes = EvaluationPass(base_runs + meta_runs, dataset, device=device, flip=flip, eigen_crop=eigen,
                            min_depth=min_depth, max_depth=max_depth, figure_images=figure_images,
                            measure=measure, repeats=repeats, uncertainty=uncertainty)
    results: list[RunResult] = []
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
                reference = None
                if run.kind == "meta":
                    from ensemble_mde.loading import base_checkpoints

                    # every checkpoint the ensemble was made from: its bases, members, fold models
                    before = [_checkpoint_seconds(path) for r in run.cfg[runs_mod.RECORD]["bases"]
                              for path, _ in base_checkpoints(r, with_oof=True)]
                    own = cost["train_seconds"]
                    members = _meta_bases(run, {r.checkpoint: r for r in base_runs})
                    reference = baseline_group("mean", members, identity) if members else None
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
                                         per_image, order=order, cost=cost, reference_group=reference,
                                         weights=passes.weight_stats.pop(str(run.path), None),
                                         sparsification=passes.sparsification.pop(str(run.path), None)))
            bar.update(task, description="baselines")
            figures_baseline = _baselines(passes, sets, results, baselines, identity, say)
            own_sets = {}   # a base is compared with the average of the first set of bases it is in
            for s in sets:
                for r in s:
                    own_sets.setdefault(str(r.path), baseline_group("mean", s, identity))
            for r in results:
                if r.kind == "base":
                    r.reference_group = own_sets.get(r.run)
    finally:
        passes.store.close()
    variants = group_by_seed(results)
    figures = passes.figures
    figures["baseline"] = figures_baseline
    data_name = "/".join(Path(eval_cfg["data"]["path"]).parts[-2:])
    info = {"data": eval_cfg["data"]["path"], "split": split,
            "data_name": f"synthetic {data_name}" if dataset.is_synthetic else data_name,
            "n_images": len(dataset), "eigen_crop": eigen, "flip": flip, "device": str(device),
            "device_name": device_name(device), "max_depth": max_depth, "min_depth": min_depth,
            "uncertainty": uncertainty}
    by_group = {v.results[0].group: v.name for v in variants}
    references = {v.name: by_group[v.results[0].reference_group] for v in variants
                  if v.results[0].reference_group in by_group}
    first_mean = baseline_group("mean", sets[0], identity) if sets else None
    comparison = Comparison(variants, passes.image_names, info, figures=figures, run_infos=infos,
                            reference=by_group.get(first_mean), references=references)
    if bootstrap:
        comparison.run_bootstrap(bootstrap, bootstrap_seed)
    return comparison


def _baselines(passes: EvaluationPass, sets, results: list[RunResult], names, identity, say) -> list:
    """Append baseline results for every base set to `results` (sets of equal composition
    are seeds of one baseline); returns the first set's mean-baseline maps of the figure images."""
    from meta_learner import baselines

    by_run = {r.run: r for r in results}
    several = len({composition_of(s, identity) for s in sets}) > 1
    figure = []
    for s in sets:
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
        learners = _set_label(s, [m.name for m in members])
        for kind, (per_image, maps, sparsification) in scored.items():
            if kind == "mean" and not figure:
                figure = maps
            results.append(RunResult(BASELINE_LABELS[kind] + (f" ({learners})" if several else ""), "baseline",
                                     f"{kind}:" + "+".join(m.run for m in members), min(m.seed for m in members),
                                     baseline_group(kind, s, identity), per_image,
                                     upper_bound=baselines.BASELINES[kind].upper_bound,
                                     order=(sets.index(s), BASELINE_NAMES.index(kind)), cost=dict(cost),
                                     reference_group=None if kind == "mean" else baseline_group("mean", s, identity),
                                     sparsification=sparsification))
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
