"""The preamble every training run shares, once: `start_run`.

In order: the processes (torchrun) and the device; the run folder, and the config it was
started with when resuming; the run's own preparation (a meta run resolves its bases);
absolute paths; the dataset, data.workers and the folder checked before any work; the
folder locked; the splits; the held-out scenes and the input size recorded; the seed.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from ensemble_mde import config as config_mod
from ensemble_mde import distributed, runs
from ensemble_mde.data import loader_workers
from ensemble_mde.data.splits import held_out_scenes, partition_settings, training_scenes
from ensemble_mde.device import resolve_device
from ensemble_mde.errors import DataError


@dataclass
class Started:
    """What a run starts from: the config (with its record), the folder, the device, the
    training and validation splits, and whether validation uses the Eigen crop."""
    cfg: dict
    folder: runs.RunFolder
    device: torch.device
    train_set: object
    val_set: object
    eigen_crop: bool


def preflight(cfg: dict, run_dir: Path) -> None:
    """Before any work: the dataset path exists, data.workers is valid and the run folder
    can be written (weights paths are checked by `config.absolute_paths`)."""
    if not Path(cfg["data"]["path"]).exists():
        raise DataError("no such file or folder (data.path)", cfg["data"]["path"])
    loader_workers(cfg["data"])
    runs.check_writable(run_dir)


def build_splits(cfg: dict):
    """(train dataset with augmentation, val dataset, eigen_crop flag for validation). The
    val GT stays at its stored resolution: validation scores exactly as `ensemble evaluate
    --split val` does (the NYU protocol upsamples the prediction to the GT). Frames the test
    split also lists are refused (data.allow_test_overlap)."""
    from ensemble_mde.data import build_dataset, eigen_crop_default
    from ensemble_mde.data.inspect import require_disjoint_test

    require_disjoint_test(cfg["data"])
    train_set = build_dataset(cfg, "train")
    val_set = build_dataset(cfg, "val", native_gt=True)
    return train_set, val_set, eigen_crop_default(cfg["data"], val_set)


@contextmanager
def start_run(cfg: dict, default_name: str, kind: str, *, resume: bool = False, force: bool = False,
              prepare: Callable[[dict], dict] | None = None,
              check_resumed: Callable[[dict], None] | None = None) -> Iterator[Started]:
    """Start (or resume) a `kind` run ("base" | "meta") of `cfg` in runs_dir/(run.name or
    `default_name`); yields what `Started` holds while the folder is locked. `prepare(cfg)`
    fills a new run's record (a meta run: its bases and data); `check_resumed(cfg)` checks a
    resumed one (a meta run: its bases are unchanged)."""
    device = distributed.init(resolve_device(cfg["run"]["device"]))
    run_dir = runs.run_dir_for(cfg, default_name)
    runs.with_record(cfg)
    if resume and runs.RunFolder(run_dir).last.is_file():
        cfg = runs.resume_config(run_dir, cfg, kind=kind)
        if check_resumed is not None:
            check_resumed(cfg)
    elif prepare is not None:
        cfg = prepare(cfg)
    view = runs.data_view(cfg)          # a meta run may train on its bases' data (its record)
    config_mod.absolute_paths(view)
    preflight(view, run_dir)
    with runs.RunFolder(run_dir).training(resume=resume, force=force) as folder:
        train_set, val_set, eigen_crop = build_splits(view)
        record = cfg[runs.RECORD]
        if partition_settings(view["data"]) is not None:  # what a fold or holdout member never trained on
            scenes = [r.scene for r in training_scenes(train_set.source, view["data"])]
            record["held_out_scenes"] = sorted(held_out_scenes(view["data"], scenes))
        if not record.get("input_size") and not cfg["data"].get("size"):
            record["input_size"] = list(val_set[0]["rgb"].shape[-2:])
        torch.manual_seed(int(cfg["run"]["seed"]))  # identical initial weights for a given seed
        yield Started(cfg, folder, device, train_set, val_set, eigen_crop)
