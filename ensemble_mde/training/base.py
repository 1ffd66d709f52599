"""Training a base learner:

    cfg = base_config("adabins", preset="cpu", overrides=["train.epochs=2"])
    run_dir, summary = train_base(cfg)
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ensemble_mde import config as config_mod
from ensemble_mde.loading import build_learner
from ensemble_mde.training.engine import train
from ensemble_mde.training.start import start_run


def base_config(name: str, *, config_file=None, overrides=(), preset=None, settings=()) -> dict:
    """Resolved config of base learner `name`: defaults < base/<name> < the protocol layer of
    its dataset's format (data/kitti for KITTI; data.protocol) < preset < file <
    overrides < settings (config.load_config)."""
    import base_learners
    from ensemble_mde.data.protocol import load_config_for_data

    if name not in base_learners.available():
        base_learners.create(name)  # raises the ModelError that names the closest learner
    cfg = load_config_for_data(["defaults", f"base/{name}"], config_file, overrides, preset, settings)
    return config_mod.absolute_paths(cfg)


def train_base(cfg: dict, *, resume: bool = False, force: bool = False, progress: bool = True):
    """Train the base learner `cfg` describes; returns (run folder, summary). A folder that
    holds a run needs resume (continue it) or force (overwrite it). Under torchrun every
    process calls this (DistributedDataParallel; rank 0 writes the run)."""
    with start_run(cfg, cfg["model"]["name"], "base", resume=resume, force=force) as run:
        model = build_learner(run.cfg)
        with selectivity_term(model, run.cfg) as extra:
            summary = train(model, run.cfg, run.train_set, run.val_set, run.folder.path, device=run.device,
                            eigen_crop=run.eigen_crop, resume=resume, progress=progress, extra_loss=extra)
    return run.folder.path, summary


@contextmanager
def selectivity_term(model: torch.nn.Module, cfg: dict):
    """Yields the depth-selectivity regulariser as an engine `extra_loss` (None when
    `selectivity.layers` is empty); forward hooks stay on the layers while training."""
    layers = list(cfg["selectivity"]["layers"])
    if not layers:
        yield None
        return
    from ensemble_mde.selectivity import LayerHooks, selectivity_regularizer

    alpha = float(cfg["selectivity"]["alpha"])
    with LayerHooks(model, layers) as hooks:
        def extra(model, outputs, batch):
            term, _ = selectivity_regularizer(hooks.outputs, batch["depth"], alpha=alpha)
            return {"selectivity": term}

        yield extra
