"""`train-meta`: pick the bases, build the stacked ensemble, fill the prediction cache
(freeze mode with cached base inputs), and train the weighting network with the shared engine.

    cfg = meta_config(inputs="rgb+d", mode="freeze", bases=["runs/adabins", "runs/bts"])
    run_dir, summary = train_meta(cfg)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import base_learners
from ensemble_mde import config as config_mod
from ensemble_mde import distributed, runs
from ensemble_mde.device import resolve_device
from ensemble_mde.engine import train
from ensemble_mde.evaluation import model_input_size
from ensemble_mde.errors import ConfigError
from ensemble_mde.io import file_sha256
from ensemble_mde.pipeline import build_splits, finalize_paths, preflight
from meta_learner.cache import CachedMetaDataset, PredictionCache, data_identity
from meta_learner.ensemble import StackedEnsemble
from meta_learner.loading import check_bases_unchanged
from meta_learner.weighting import DEFAULT_ENCODER, build_weighting

DEFAULT_BASES = ("adabins", "bts", "ldrn")


def meta_config(*, inputs: str | None = None, mode: str | None = None, bases=None, config_file=None,
                overrides=(), preset=None) -> dict:
    """Resolved meta config: defaults < meta/weighting < preset < file < overrides < the named choices."""
    extra = list(overrides)
    if inputs:
        extra.append(f"meta.inputs={inputs}")
    if mode:
        extra.append(f"ensemble.mode={mode}")
    if bases:
        extra.append("ensemble.bases=[" + ", ".join(json.dumps(str(b)) for b in bases) + "]")
    return config_mod.load_config(["defaults", "meta/weighting"], config_file, extra, preset)


def newest_finished_runs(runs_dir: Path, learners=DEFAULT_BASES) -> list[Path]:
    """For each learner, the newest run folder under runs_dir with a summary.json (finished)."""
    found = {}
    for summary in Path(runs_dir).glob("*/summary.json"):
        cfg_file = summary.parent / "config.yaml"
        if not cfg_file.is_file() or not (summary.parent / "best.pt").is_file():
            continue
        learner = config_mod.read_yaml(cfg_file).get("model", {}).get("name")
        if learner in learners and (learner not in found or summary.stat().st_mtime > found[learner][0]):
            found[learner] = (summary.stat().st_mtime, summary.parent)
    missing = [name for name in learners if name not in found]
    if missing:
        raise ConfigError(f"no finished run of {', '.join(missing)} under {runs_dir}; train them first "
                          f"(ensemble train-base NAME) or pass --bases RUN,RUN,...", "ensemble.bases")
    return [found[name][1] for name in learners]


def resolve_bases(cfg: dict) -> list[dict]:
    """One entry per base: {name, run (path or null), sha256 (or null), model (its model section),
    input_size, data (the data section it was trained on)}."""
    mode = cfg["ensemble"]["mode"]
    entries = cfg["ensemble"]["bases"] or newest_finished_runs(Path(cfg["run"]["runs_dir"]))
    resolved = []
    for entry in entries:
        path = Path(str(entry))
        if path.exists():
            ckpt_path = runs.resolve_checkpoint(path)
            base_cfg = runs.read_checkpoint(ckpt_path)["config"]
            size = model_input_size(base_cfg)
            resolved.append({"name": base_cfg["model"]["name"], "run": str(ckpt_path.resolve()),
                             "sha256": file_sha256(ckpt_path), "model": base_cfg["model"],
                             "data": base_cfg["data"], "input_size": list(size) if size else None})
        elif mode == "simultaneous" and str(entry) in base_learners.available():
            base_cfg = config_mod.load_config(["defaults", f"base/{entry}"])
            if "pretrained" in base_cfg["model"]:
                base_cfg["model"]["pretrained"] = bool(cfg["ensemble"]["base_pretrained"])
            resolved.append({"name": str(entry), "run": None, "sha256": None, "model": base_cfg["model"],
                             "data": None, "input_size": None})
        else:
            hint = " or a learner name (simultaneous mode only)" if mode != "simultaneous" else " or a learner name"
            raise ConfigError(f"base {entry!r} is not a run folder{hint}", "ensemble.bases")
    names = [r["name"] for r in resolved]
    for r in resolved:  # two runs of one learner: tell them apart by their folder
        if names.count(r["name"]) > 1 and r["run"]:
            r["name"] = f"{r['name']}:{Path(r['run']).parent.name}"
    return resolved


def build_ensemble(cfg: dict, init_weights: bool = True) -> StackedEnsemble:
    """The stacked ensemble as cfg["ensemble"]["resolved"] describes it, before any checkpoint
    is loaded. Bases that come from a run get no initial weights (theirs replace them); fresh
    ones (simultaneous mode) get their config's, as does the meta-learner, when init_weights."""
    resolved = cfg["ensemble"]["resolved"]
    bases = [base_learners.create(r["model"]["name"], **runs.model_kwargs(
        {"model": r["model"]}, init_weights=init_weights and not r["run"])) for r in resolved]
    meta = build_weighting(cfg, len(bases), init_weights)
    return StackedEnsemble(bases, meta, [r["name"] for r in resolved], mode=cfg["ensemble"]["mode"],
                           min_depth=cfg["data"]["min_depth"], max_depth=cfg["data"]["max_depth"],
                           input_sizes=[r.get("input_size") for r in resolved], grid_size=model_input_size(cfg))


def load_base_weights(ensemble: StackedEnsemble, resolved: list[dict]) -> None:
    """Copy each trained base's checkpoint weights into the ensemble (fresh names stay random)."""
    for base, r in zip(ensemble.bases, resolved):
        if r["run"]:
            path = Path(r["run"])
            runs.load_state(base, runs.read_checkpoint(path)["model"], path, r["model"]["name"])


def variant_parts(cfg: dict) -> list[str]:
    """What tells a meta variant apart, e.g. ["rgb+d", "freeze", "live", "mobilenetv2_100",
    "relaxed"]: inputs and mode, then what differs from the study's network and our
    cached freeze mode. `.get`: configs of runs made before these keys existed."""
    meta, ensemble = cfg["meta"], cfg["ensemble"]
    parts = [meta["inputs"], ensemble["mode"]]
    if ensemble["mode"] == "freeze" and ensemble.get("base_inputs", "cached") == "live":
        parts.append("live")
    if meta.get("encoder", DEFAULT_ENCODER) != DEFAULT_ENCODER:
        parts.append(meta["encoder"])
    if meta.get("head", "softmax") != "softmax":
        parts.append(meta["head"])
    return parts


def run_name(cfg: dict) -> str:
    """The default run folder name, e.g. meta_rgbd_freeze or meta_rgbd_freeze_live_relaxed."""
    return "_".join(["meta", *(part.replace("+", "") for part in variant_parts(cfg))])


def ensemble_data(cfg: dict, resolved: list[dict]) -> dict:
    """The data section of a meta run that names no dataset (data.path null): that of its
    bases (the first one trained on a dataset: an imported run was not), data.workers as
    set, and frames (the ensemble's grid) at data.size when set, else at the largest base
    input size by area, so that no base sees a frame enlarged from a smaller grid."""
    trained = next((r["data"] for r in resolved if r["data"] and r["data"].get("path")), None)
    if trained is None:
        raise ConfigError("no base was trained on a dataset here (fresh or imported bases); pass --data PATH",
                          "data.path")
    sizes = [r["input_size"] for r in resolved if r.get("input_size")]
    size = cfg["data"]["size"] or (max(sizes, key=lambda s: s[0] * s[1]) if sizes else trained.get("size"))
    return {**trained, "workers": cfg["data"]["workers"], "size": list(size) if size else None}


def train_meta(cfg: dict, *, resume: bool = False, force: bool = False, progress: bool = True, say=print):
    """Train the meta-learner (and, by mode, the bases); returns (run folder, summary). A
    folder that holds a run needs resume (continue it) or force (overwrite it). Under
    torchrun every process calls this; rank 0 fills the cache and writes the run."""
    from ensemble_mde.data import build_dataset

    device = distributed.init(resolve_device(cfg["run"]["device"]))
    say = say if distributed.is_main() else (lambda *args: None)  # rank 0 speaks for all
    run_dir = runs.run_dir_for(cfg, run_name(cfg))
    if resume and (run_dir / "last.pt").is_file():
        cfg = runs.resume_config(run_dir, cfg, kind="meta")
        check_bases_unchanged(cfg)
    else:
        cfg["ensemble"]["resolved"] = resolve_bases(cfg)
        if cfg["data"]["path"] is None:  # train on the data the bases saw
            cfg["data"] = ensemble_data(cfg, cfg["ensemble"]["resolved"])
        cfg = finalize_paths(cfg)
    preflight(cfg, run_dir)
    mode = cfg["ensemble"]["mode"]
    resolved = cfg["ensemble"]["resolved"]
    say("bases: " + ", ".join(f"{r['name']} ({r['run'] or 'fresh'}"
                              f"{', input ' + 'x'.join(map(str, r['input_size'])) if r.get('input_size') else ''})"
                              for r in resolved))

    with runs.training_into(run_dir, resume=resume, force=force):
        train_set, val_set, eigen_crop = build_splits(cfg)
        if not cfg["run"].get("input_size") and not cfg["data"].get("size"):
            cfg["run"]["input_size"] = list(val_set[0]["rgb"].shape[-2:])
        torch.manual_seed(int(cfg["run"]["seed"]))
        ensemble = build_ensemble(cfg)
        load_base_weights(ensemble, resolved)

        if mode == "freeze" and cfg["ensemble"]["base_inputs"] == "cached":
            # neither training nor validation runs the frozen bases again
            augment = cfg["augment"] if cfg["augment"]["enabled"] else None
            train_set = cached_split(cfg, ensemble, build_dataset(cfg, "train", augment=False), device, progress,
                                     augment)
            val_set = cached_split(cfg, ensemble, val_set, device, progress)
        # otherwise the bases run on every batch: in freeze mode frozen, in eval mode and without
        # gradients, on the augmented crops the meta-learner sees (the study's protocol)
        factor = 1.0 if mode == "simultaneous" else float(cfg["ensemble"]["base_lr_factor"])
        groups = ensemble.param_groups(float(cfg["train"]["lr"]), factor)
        summary = train(ensemble, cfg, train_set, val_set, run_dir, device=device, eigen_crop=eigen_crop,
                        resume=resume, progress=progress, param_groups=groups)
    return run_dir, summary


def cached_split(cfg: dict, ensemble: StackedEnsemble, plain, device: torch.device, progress: bool,
                 augment: dict | None = None) -> CachedMetaDataset:
    """Freeze mode: the bases' predictions on the un-augmented frames of the dataset `plain`
    (each base at its own input size), computed once into the HDF5 cache (reused across meta
    runs, rebuilt when a base changes; by rank 0 alone under torchrun). With `augment` (the
    training split's `augment:` section) the geometric augmentation is applied to RGB, GT
    and the cached maps together."""
    from ensemble_mde.data import loader_workers

    frame = tuple(plain[0]["rgb"].shape[-2:])
    data_id = data_identity(plain.root, plain.format, plain.split, [r.name for r in plain.records], frame)
    cache_dir = Path(cfg["ensemble"]["cache_dir"] or Path(cfg["run"]["runs_dir"]) / ".cache")
    hashes = [r["sha256"] for r in cfg["ensemble"]["resolved"]]
    with distributed.main_process_first():  # rank 0 fills; the others then open the finished file
        cache = PredictionCache.open(cache_dir, hashes, data_id)
        cache.fill(plain, list(ensemble.bases), device=device, batch_size=int(cfg["train"]["val_batch_size"]),
                   workers=loader_workers(cfg["data"], device.type), input_sizes=ensemble.input_sizes,
                   progress=progress and distributed.is_main(), label=f"caching base predictions ({plain.split})")
    return CachedMetaDataset(plain, cache, augment, seed=int(cfg["run"]["seed"]))
