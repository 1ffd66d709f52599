"""Stacking protocols: which base predictions the meta-learner trains on (ensemble.stacking).

    in-sample  the bases' predictions on the frames they were trained on (the SG study's
               protocol). A set passed as a base stands for its members (SAME, CV ensembles).
    holdout    every base is a `--holdout F` set, all with one partition: the bases trained on
               the other scenes, the meta-learner trains on the held-out scenes only
               (data.train_on: held_out).
    oof        every base is a `--folds K` set, all with one partition, and stands for one
               learner: for a training frame of fold k the meta-learner sees each learner's
               fold-k model (which never saw that scene). Validation and test use each
               learner's `full` model, or with ensemble.oof_test: folds the mean of its K fold
               models. Freeze mode with cached base inputs: the cache holds the out-of-fold
               maps, keyed by every checkpoint that fed it.

A base record entry (training/meta.py `resolve_bases`) may carry "oof" (the fold models
that fill the training cache: {"folds", "partition", "members": [{"fold", "run", "sha256"}]})
and "members" (a mean-of-folds base: the checkpoints it averages; "run" is then the set folder).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ensemble_mde import runs
from ensemble_mde.errors import ConfigError, DataError
from ensemble_mde.io import file_sha256
from ensemble_mde.training.sets import member_runs, partition_digest, read_set, set_of_run

STACKINGS = ("in-sample", "holdout", "oof")
OOF_TESTS = ("full", "folds")
# data keys of the scene partition: a meta run over set members starts from none of them
PARTITION_KEYS = {"folds": 0, "fold": None, "holdout": 0.0, "train_on": "rest"}


def checkpoint_entry(path: str | Path) -> dict:
    """A trained base as a record entry: {name, run, sha256, model, data, input_size}, and for
    a set member "set": {folder, member, kind, partition}."""
    ckpt_path = runs.resolve_checkpoint(path)
    base_cfg = runs.read_checkpoint(ckpt_path)["config"]
    size = runs.model_input_size(base_cfg)
    entry = {"name": base_cfg["model"]["name"], "run": str(ckpt_path.resolve()), "sha256": file_sha256(ckpt_path),
             "model": base_cfg["model"], "data": runs.data_view(base_cfg)["data"],
             "input_size": list(size) if size else None}
    member = set_of_run(ckpt_path.resolve())
    if member is not None:
        _, name, info = member
        entry["set"] = {"folder": str(ckpt_path.resolve().parent.parent), "member": name, "kind": info["kind"],
                        "partition": partition_digest(info)}
    return entry


def set_entries(folder: Path, cfg: dict) -> list[dict]:
    """The record entries a set folder stands for under cfg's ensemble.stacking."""
    info = read_set(folder)
    stacking = cfg["ensemble"]["stacking"]
    if stacking != "oof":
        names = {"folds": [m for m in info["members"] if m != "full"]}.get(info["kind"], info["members"])
        return [checkpoint_entry(run) for run in member_runs(folder, names)]
    if info["kind"] != "folds":
        raise ConfigError(f"--stacking oof needs sets made with --folds K; {folder} is a --{info['kind']} set",
                          "ensemble.stacking")
    k = int(info["spec"]["folds"])
    folds = [checkpoint_entry(run) for run in member_runs(folder, [f"fold{i}" for i in range(k)])]
    entry = checkpoint_entry(member_runs(folder, ["full"])[0])
    entry["oof"] = {"folds": k, "partition": partition_digest(info), "held_out_scenes":
                    [info["held_out_scenes"][f"fold{i}"] for i in range(k)],
                    "members": [{"fold": i, "run": f["run"], "sha256": f["sha256"]} for i, f in enumerate(folds)]}
    if cfg["ensemble"]["oof_test"] == "folds":
        entry.update(run=str(folder.resolve()), members=[{"run": f["run"], "sha256": f["sha256"]} for f in folds],
                     sha256=hashlib.sha256("".join(f["sha256"] for f in folds).encode()).hexdigest())
        entry["set"]["member"] = "mean of folds"
    return [entry]


def check_protocol(cfg: dict, resolved: list[dict]) -> None:
    """The bases fit ensemble.stacking: holdout and oof need frozen bases from sets of one
    partition (oof: cached base inputs too)."""
    stacking = cfg["ensemble"]["stacking"]
    if stacking == "in-sample":
        return
    if cfg["ensemble"]["mode"] != "freeze":
        raise ConfigError(f"--stacking {stacking} trains the meta-learner on predictions of frozen bases; "
                          "use --freeze", "ensemble.stacking")
    if stacking == "oof" and cfg["ensemble"]["base_inputs"] != "cached":
        raise ConfigError("--stacking oof reads the out-of-fold maps from the prediction cache; set "
                          "ensemble.base_inputs: cached", "ensemble.base_inputs")
    kind = "folds" if stacking == "oof" else "holdout"
    plain = [r["name"] for r in resolved if (r.get("set") or {}).get("kind") != kind]
    if plain:
        raise ConfigError(f"--stacking {stacking} needs every base to be a --{kind} set; {plain[0]} is not",
                          "ensemble.bases")
    partitions = {r["set"]["partition"] for r in resolved}
    if len(partitions) > 1:
        raise ConfigError(f"--stacking {stacking}: the sets hold out different scenes; train them with the same "
                          "--partition-seed and fraction/folds on the same data", "ensemble.bases")


def stacking_data(data: dict, resolved: list[dict], stacking: str) -> dict:
    """The data section a meta run trains on, from its bases' `data`: the partition dropped
    (set members each held out their own part), and under holdout the held-out part only."""
    data = {**data, **PARTITION_KEYS}
    if stacking == "holdout":
        trained = resolved[0]["data"]
        data.update(holdout=trained["holdout"], partition_seed=trained["partition_seed"], train_on="held_out")
    return data


def oof_cache_hashes(bases_record: list[dict]) -> list[str]:
    """The training cache's key parts under oof: per learner its fold checkpoints and partition."""
    return ["oof:" + r["oof"]["partition"] + ":" + ",".join(m["sha256"] for m in r["oof"]["members"])
            for r in bases_record]


def oof_groups(dataset, bases_record: list[dict], device) -> list[tuple[list[int], list[torch.nn.Module]]]:
    """[(dataset indices of fold k's frames, the K learners' fold-k models in eval mode)] for
    PredictionCache.fill. Every frame's scene must be in exactly one fold."""
    from ensemble_mde.loading import load_run

    held = bases_record[0]["oof"]["held_out_scenes"]
    fold_of = {scene: k for k, scenes in enumerate(held) for scene in scenes}
    outside = [r.name for r in dataset.records if r.scene not in fold_of]
    if outside:
        raise DataError(f"{len(outside)} training frame(s) (first {outside[0]}) are in no fold of the sets; the "
                        "meta-learner must train on the data the sets were partitioned from", "ensemble.bases")
    groups = []
    for k in range(len(held)):
        indices = [i for i, r in enumerate(dataset.records) if fold_of[r.scene] == k]
        models = [load_run(r["oof"]["members"][k]["run"], device=device)[0] for r in bases_record]
        groups.append((indices, models))
    return groups
