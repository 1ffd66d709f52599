"""Splits by scene: the validation split carved from the training scenes, and the partition
of the remaining training scenes into folds or a holdout part (docs/design.md §3, §7).

Neighbouring frames of one scene are near copies, so every split here is by scene: a frame
never sits on one side while another view of its room sits on the other. The partition
never touches the validation scenes, so every member of a set validates on the same frames.

    data.folds: K >= 2       the training scenes fall into K folds (drawn with data.partition_seed)
    data.fold: k             this run holds out fold k
    data.holdout: F          this run holds out round(F x scenes) of them instead
    data.train_on: rest      it trains on the scenes outside the held-out part
             | held_out      or on the held-out part only (the holdout protocol's meta-learner)
"""

from __future__ import annotations

import numpy as np

from ensemble_mde.data.readers import Record
from ensemble_mde.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
TRAIN_ON = ("rest", "held_out")


def scene_split(scenes: list[str], fraction: float, seed: int) -> set[str]:
    """round(fraction x number of scenes) of the distinct scenes, drawn with `seed`; at least
    one and at most all but one when there are >= 2 scenes, none with a single scene."""
    unique = sorted(set(scenes))
    if len(unique) < 2:
        return set()
    n_drawn = min(len(unique) - 1, max(1, round(fraction * len(unique))))
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[i] for i in order[:n_drawn]}


def scene_folds(scenes: list[str], folds: int, seed: int) -> list[set[str]]:
    """The distinct scenes in `folds` disjoint parts covering all of them, sizes differing by
    at most one, drawn with `seed`."""
    unique = sorted(set(scenes))
    if folds > len(unique):
        raise DataError(f"{folds} folds need at least {folds} training scenes, the split has {len(unique)}",
                        "data.folds")
    order = np.random.default_rng(seed).permutation(len(unique))
    return [{unique[i] for i in part} for part in np.array_split(order, folds)]


def partition_settings(cfg_data: dict) -> dict | None:
    """The run's partition {"folds", "fold", "holdout", "seed", "train_on"} checked, or None
    when it holds nothing out. `.get`: configs of runs made before these keys existed."""
    folds, fold = int(cfg_data.get("folds") or 0), cfg_data.get("fold")
    holdout = float(cfg_data.get("holdout") or 0.0)
    train_on = cfg_data.get("train_on", "rest")
    if train_on not in TRAIN_ON:
        raise ConfigError(f"data.train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}", "data.train_on")
    if holdout and (folds > 1 or fold is not None):
        raise ConfigError("data.holdout and data.folds/data.fold are two ways of holding scenes out; set one",
                          "data.holdout")
    if fold is not None and not (folds > 1 and 0 <= int(fold) < folds):
        raise ConfigError(f"data.fold {fold} needs data.folds >= 2 and 0 <= fold < folds (folds is {folds})",
                          "data.fold")
    if not holdout and fold is None:
        if train_on == "held_out":
            raise ConfigError("data.train_on: held_out needs a held-out part (data.holdout, or data.folds with "
                              "data.fold)", "data.train_on")
        return None
    return {"folds": folds, "fold": None if fold is None else int(fold), "holdout": holdout,
            "seed": int(cfg_data.get("partition_seed") or 0), "train_on": train_on}


def held_out_scenes(cfg_data: dict, train_scenes: list[str]) -> set[str] | None:
    """The training scenes (validation excluded) this run's partition holds out, or None."""
    part = partition_settings(cfg_data)
    if part is None:
        return None
    if part["holdout"]:
        if len(set(train_scenes)) < 2:
            raise DataError("a holdout part needs at least 2 training scenes", "data.holdout")
        return scene_split(train_scenes, part["holdout"], part["seed"])
    return scene_folds(train_scenes, part["folds"], part["seed"])[part["fold"]]


def training_scenes(source, cfg_data: dict) -> list[Record]:
    """The training records before any partition: the train split less the validation scenes
    carved from it (none when the source has its own val split)."""
    train = source.records("train")
    if source.has("val"):
        return train
    val = validation_scenes(source, cfg_data, train)
    return [r for r in train if r.scene not in val]


def validation_scenes(source, cfg_data: dict, train: list[Record]) -> set[str]:
    """Scenes carved from `train` for validation (data.val_fraction, data.val_seed)."""
    fraction = float(cfg_data["val_fraction"])
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {fraction}", "data.val_fraction")
    return scene_split([r.scene for r in train], fraction, int(cfg_data["val_seed"]))


def split_records(source, split: str, cfg_data: dict) -> list[Record]:
    """Records of `split`. Validation is the source's own val split when it has one, else
    whole scenes carved from train; never test. Training is what remains, less (or, with
    data.train_on: held_out, only) the scenes the partition holds out."""
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} must be one of {', '.join(SPLITS)}", "split")
    if split == "test" or (split == "val" and source.has("val")):
        return source.records(split)
    if split == "val":
        train = source.records("train")
        val = validation_scenes(source, cfg_data, train)
        if not val:
            raise DataError("no val split: a scene-disjoint validation split needs at least 2 training scenes, "
                            f"the train split has {len({r.scene for r in train})}", source.root)
        return [r for r in train if r.scene in val]
    train = training_scenes(source, cfg_data)
    held_out = held_out_scenes(cfg_data, [r.scene for r in train])
    if held_out is None:
        return train
    keep_held_out = cfg_data.get("train_on", "rest") == "held_out"
    return [r for r in train if (r.scene in held_out) == keep_held_out]


def repeated_frames(records: list[Record]) -> list[str]:
    """The RGB keys listed more than once in `records`, each once, in listing order."""
    seen: set[str] = set()
    repeated: list[str] = []
    for r in records:
        if r.rgb in seen and r.rgb not in repeated:
            repeated.append(r.rgb)
        seen.add(r.rgb)
    return repeated
