"""Training the meta-learner: pick the bases, build the stacked ensemble, fill the prediction
cache (freeze mode with cached base inputs), and train with the shared engine.

    cfg = meta_config(inputs="rgb+d", mode="freeze", bases=["runs/adabins", "runs/bts"])
    run_dir, summary = train_meta(cfg)

What a meta run derives goes into its record (`runs.RECORD`): `bases` (each base's name, run,
checkpoint sha256, model section, input size and training data) and `data` (the data it
trains on when it names none: its bases').
"""

from __future__ import annotations

from pathlib import Path

import torch

import base_learners
from ensemble_mde import config as config_mod
from ensemble_mde import distributed, runs
from ensemble_mde.data.protocol import load_config_for_data, protocol_layer
from ensemble_mde.errors import ConfigError
from ensemble_mde.loading import build_ensemble, check_bases_unchanged, load_base_weights
from ensemble_mde.runs import RECORD, run_name
from ensemble_mde.training.engine import train
from ensemble_mde.training.sets import read_set
from ensemble_mde.training.stacking import (check_protocol, checkpoint_entry, oof_cache_hashes, oof_groups,
                                           set_entries, stacking_data)
from ensemble_mde.training.start import start_run
from meta_learner.cache import CachedMetaDataset, PredictionCache, data_identity
from meta_learner.ensemble import StackedEnsemble

DEFAULT_BASES = ("adabins", "bts", "ldrn")


def meta_config(*, inputs: str | None = None, mode: str | None = None, bases=None, config_file=None,
                overrides=(), preset=None, settings=()) -> dict:
    """Resolved meta config: defaults < meta/weighting < the protocol layer of the dataset it
    names (none when it names none: it then takes its bases' data section) < preset < file <
    overrides < settings < the named choices (inputs, mode, bases: run folders or learner names)."""
    named = [config_mod.Setting(key, value, flag) for key, value, flag in (
        ("meta.inputs", inputs, "--inputs"), ("ensemble.mode", mode, "--freeze/--finetune/--simultaneous"),
        ("ensemble.bases", [str(b) for b in bases] if bases else None, "--bases")) if value]
    return load_config_for_data(["defaults", "meta/weighting"], config_file, overrides, preset, [*settings, *named])


def newest_finished_runs(runs_dir: Path, learners=DEFAULT_BASES) -> list[Path]:
    """For each learner, the newest finished run folder under runs_dir."""
    found = runs.finished_runs(runs_dir, learners)
    if len(found) < len(learners):
        have = {config_mod.read_yaml(runs.RunFolder(f).config_file)["model"]["name"] for f in found}
        missing = [name for name in learners if name not in have]
        raise ConfigError(f"no finished run of {', '.join(missing)} under {runs_dir}; train them first "
                          f"(ensemble train-base NAME) or pass --bases RUN,RUN,...", "ensemble.bases")
    return found


def resolve_bases(cfg: dict) -> list[dict]:
    """One entry per base: {name, run (checkpoint path or null), sha256 (or null), model (its
    model section), input_size, data (the data section it was trained on)}; a set folder
    gives the entries of ensemble.stacking (training/stacking.py: `set`, `oof`, `members`)."""
    mode = cfg["ensemble"]["mode"]
    entries = cfg["ensemble"]["bases"] or newest_finished_runs(Path(cfg["run"]["runs_dir"]))
    resolved = []
    for entry in entries:
        path = Path(str(entry))
        if path.is_dir() and read_set(path) is not None:
            resolved += set_entries(path, cfg)
        elif path.exists():
            resolved.append(checkpoint_entry(path))
        elif mode == "simultaneous" and str(entry) in base_learners.available():
            # a fresh base takes the protocol of the run's data (KITTI's 80 m output range)
            base_cfg = config_mod.load_config(["defaults", f"base/{entry}"], protocol=protocol_layer(cfg["data"]))
            if "pretrained" in base_cfg["model"]:
                base_cfg["model"]["pretrained"] = bool(cfg["ensemble"]["base_pretrained"])
            resolved.append({"name": str(entry), "run": None, "sha256": None, "model": base_cfg["model"],
                             "data": None, "input_size": None})
        else:
            hint = " or a learner name (simultaneous mode only)" if mode != "simultaneous" else " or a learner name"
            raise ConfigError(f"base {entry!r} is not a run or set folder{hint}", "ensemble.bases")
    names = [r["name"] for r in resolved]
    for r in resolved:  # two runs of one learner: tell them apart by their folder (set and member)
        if names.count(r["name"]) > 1 and r["run"]:
            where = [Path(r["run"]).parent.name]
            if r.get("set"):
                folder = r["set"]["folder"]
                alone = sum(1 for o in resolved if o.get("set", {}).get("folder") == folder) == 1
                where = [Path(folder).name] + ([] if alone else [r["set"]["member"]])  # alone: its set says it
            r["name"] = f"{r['name']}:{'/'.join(where)}"
    check_protocol(cfg, resolved)
    return resolved


def ensemble_data(cfg: dict, resolved: list[dict]) -> dict:
    """The data section of a meta run that names no dataset (data.path null): that of its
    bases (the first one trained on a dataset: an imported run was not), data.workers as
    set, the partition of ensemble.stacking (`stacking_data`), and frames (the ensemble's
    grid) at data.size when set, else at the largest base input size by area, so that no
    base sees a frame enlarged from a smaller grid."""
    trained = next((r["data"] for r in resolved if r["data"] and r["data"].get("path")), None)
    if trained is None:
        raise ConfigError("no base was trained on a dataset here (fresh or imported bases); pass --data PATH",
                          "data.path")
    sizes = [r["input_size"] for r in resolved if r.get("input_size")]
    size = cfg["data"]["size"] or (max(sizes, key=lambda s: s[0] * s[1]) if sizes else trained.get("size"))
    data = stacking_data(trained, resolved, cfg["ensemble"]["stacking"])
    return {**data, "workers": cfg["data"]["workers"], "size": list(size) if size else None}


def prepare_record(cfg: dict) -> dict:
    """A new meta run's record: its bases, and (when it names no dataset) their data."""
    record = cfg[RECORD]
    record["bases"] = resolve_bases(cfg)
    if cfg["data"]["path"] is None:  # train on the data the bases saw
        record["data"] = ensemble_data(cfg, record["bases"])
    elif cfg["ensemble"]["stacking"] == "holdout":  # a dataset named: still only its held-out scenes
        record["data"] = stacking_data(cfg["data"], record["bases"], "holdout")
    return cfg


def train_meta(cfg: dict, *, resume: bool = False, force: bool = False, progress: bool = True, say=print):
    """Train the meta-learner (and, by mode, the bases); returns (run folder, summary). A
    folder that holds a run needs resume (continue it) or force (overwrite it). Under
    torchrun every process calls this; rank 0 fills the cache and writes the run."""
    from ensemble_mde.data import build_dataset

    say = say if distributed.is_main() else (lambda *args: None)  # rank 0 speaks for all
    with start_run(cfg, run_name(cfg), "meta", resume=resume, force=force, prepare=prepare_record,
                   check_resumed=check_bases_unchanged) as run:
        cfg, mode, bases = run.cfg, run.cfg["ensemble"]["mode"], run.cfg[RECORD]["bases"]
        say("bases: " + ", ".join(f"{r['name']} ({r['run'] or 'fresh'}"
                                  f"{', input ' + 'x'.join(map(str, r['input_size'])) if r.get('input_size') else ''})"
                                  for r in bases))
        ensemble = build_ensemble(cfg)
        load_base_weights(ensemble, bases)
        train_set, val_set = run.train_set, run.val_set
        if mode == "freeze" and cfg["ensemble"]["base_inputs"] == "cached":
            # neither training nor validation runs the frozen bases again
            augment = cfg["augment"] if cfg["augment"]["enabled"] else None
            plain = build_dataset(runs.data_view(cfg), "train", augment=False)
            train_set = cached_split(cfg, ensemble, plain, run.device, progress, augment,
                                     out_of_fold=cfg["ensemble"]["stacking"] == "oof")
            val_set = cached_split(cfg, ensemble, val_set, run.device, progress)
        # otherwise the bases run on every batch: in freeze mode frozen, in eval mode and without
        # gradients, on the augmented crops the meta-learner sees (the study's protocol)
        factor = 1.0 if mode == "simultaneous" else float(cfg["ensemble"]["base_lr_factor"])
        groups = ensemble.param_groups(float(cfg["train"]["lr"]), factor)
        summary = train(ensemble, cfg, train_set, val_set, run.folder.path, device=run.device,
                        eigen_crop=run.eigen_crop, resume=resume, progress=progress, param_groups=groups)
    return run.folder.path, summary


def cache_data_id(cfg: dict, plain) -> str:
    """The data identity (`meta_learner.cache.data_identity`) of the frames of `plain`, the
    un-augmented split of the data `cfg` trains on, with the dataset's fingerprint
    (`data_fingerprint`): data rendered or listed again in place keeps its root and frame
    names, and must not be given the cached maps of the old images."""
    from ensemble_mde.data.dataset import data_fingerprint

    frame = tuple(plain[0]["rgb"].shape[-2:])
    names = [r.name for r in plain.records]
    return (data_identity(plain.root, plain.format, plain.split, names, frame) + ":"
            + data_fingerprint(runs.data_view(cfg)["data"]))


def cached_split(cfg: dict, ensemble: StackedEnsemble, plain, device: torch.device, progress: bool,
                 augment: dict | None = None, out_of_fold: bool = False) -> CachedMetaDataset:
    """Freeze mode: the bases' predictions on the un-augmented frames of the dataset `plain`
    (each base at its own input size), computed once into the HDF5 cache (reused across meta
    runs, rebuilt when a base changes; by rank 0 alone under torchrun). With `augment` (the
    training split's `augment:` section) the geometric augmentation is applied to RGB, GT
    and the cached maps together. out_of_fold: each frame's maps come from the fold models
    that held its scene out (--stacking oof), keyed by all of them."""
    from ensemble_mde.data import loader_workers

    data_id = cache_data_id(cfg, plain)
    cache_dir = Path(cfg["ensemble"]["cache_dir"] or Path(cfg["run"]["runs_dir"]) / ".cache")
    bases = cfg[RECORD]["bases"]
    hashes = oof_cache_hashes(bases) if out_of_fold else [r["sha256"] for r in bases]
    with distributed.main_process_first():  # rank 0 fills; the others then open the finished file
        cache = PredictionCache.open(cache_dir, hashes, data_id)
        groups = oof_groups(plain, bases, device) if out_of_fold and not cache.complete else None
        cache.fill(plain, list(ensemble.bases), groups=groups, device=device,
                   batch_size=int(cfg["train"]["val_batch_size"]), workers=loader_workers(cfg["data"], device.type),
                   input_sizes=ensemble.input_sizes,
                   progress=progress and distributed.is_main(), label=f"caching base predictions ({plain.split})")
    return CachedMetaDataset(plain, cache, augment, seed=int(cfg["run"]["seed"]))
