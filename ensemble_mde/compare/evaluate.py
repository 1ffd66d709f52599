"""The evaluation behind a comparison: the runs read and named, every run once over the split
(compare.passes `EvaluationPass`, which keeps the bases' maps), then the baselines over the
stored maps, the grouping by seed and the bootstrap; with uncertainty, the sparsification of
each ensemble's spread in the same pass (compare.uncertainty)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ensemble_mde.compare.passes import EvaluationPass, record_checkpoint, train_seconds_of
from ensemble_mde.compare.tables import Comparison
from ensemble_mde.compare.variants import (RunInfo, RunResult, config_identity, group_by_seed, has_training_data,
                                           read_run, validation_rmse)
from ensemble_mde import runs as runs_mod
from ensemble_mde.errors import CheckpointError, ConfigError
from ensemble_mde.evaluation import evaluation_config
from ensemble_mde.training.sets import read_set, set_of_run

BASELINE_NAMES = ("mean", "median", "weighted", "oracle", "convex")
BASELINE_LABELS = {"mean": "Baseline (mean)", "median": "Median", "weighted": "Weighted (1/val RMSE)",
                   "oracle": "Oracle (selection)", "convex": "Oracle (convex blend)"}
INPUT_ORDER = {"rgb": 0, "d": 1, "rgb+d": 2}
MODE_ORDER = {"freeze": 0, "finetune": 1, "simultaneous": 2}


def data_identity(cfg: dict) -> tuple:
    """What names the dataset a run trained on (a meta run: its record's data when it named none)."""
    data = runs_mod.data_view(cfg)["data"]
    return tuple(str(data.get(k)) for k in ("path", "format", "train_list", "test_list", "train_root", "test_root"))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    from ensemble_mde.profiling import cpu_model

    return f"CPU {cpu_model()}, {torch.get_num_threads()} threads"


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
    return train_seconds_of(folder.summary()) if folder.summary_file.is_file() else None


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
