"""Load any run (base learner or stacked ensemble) or a packaged learner by name."""

from __future__ import annotations

from pathlib import Path

import torch

from ensemble_mde import config as config_mod
from ensemble_mde import runs


def load_any_run(run: str | Path, device: torch.device | str = "cpu", which: str = "best",
                 for_inference: bool = False):
    """(model in eval mode on `device`, resolved config) for a run folder or checkpoint.
    for_inference: on the fast path (ensemble_mde.speed: BatchNorm folded, channels_last);
    such a model must not be trained."""
    path = runs.resolve_checkpoint(run, which)
    ckpt = runs.read_checkpoint(path)
    if ckpt.get("kind") == "meta":
        from meta_learner.loading import load_meta_run

        model, cfg = load_meta_run(path, ckpt, device=device)
    else:
        model, cfg, _ = runs.load_run(path, device=device)
    if for_inference:
        from ensemble_mde.speed import prepare_for_inference

        prepare_for_inference(model)
    return model, cfg


META_TARGET = "meta"


def packaged_learner(name: str, num_learners: int = 3, overrides=()):
    """A freshly initialised learner from its packaged config and `key=value` overrides:
    (model, cfg); no initial weights are fetched. The name "meta" gives the weighting network
    alone for `num_learners` bases (configs/meta/weighting.yaml)."""
    import base_learners

    if name == META_TARGET:
        from meta_learner.weighting import WeightingOnRgb, build_weighting

        cfg = config_mod.load_config(["defaults", "meta/weighting"], overrides=overrides)
        network = build_weighting(cfg, num_learners, init_weights=False)
        return WeightingOnRgb(network, cfg["data"]["max_depth"]).eval(), cfg

    if name not in base_learners.available():
        base_learners.create(name)  # raises the ModelError naming the closest learner
    cfg = config_mod.load_config(["defaults", f"base/{name}"], overrides=overrides)
    return runs.build_learner(cfg, init_weights=False).eval(), cfg
