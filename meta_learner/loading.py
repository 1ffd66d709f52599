"""Rebuild a stacked ensemble from its run folder; refuse when a frozen base changed."""

from __future__ import annotations

from pathlib import Path

import torch

from ensemble_mde import runs
from ensemble_mde.errors import CheckpointError
from ensemble_mde.io import file_sha256


def check_bases_unchanged(cfg: dict) -> None:
    """A freeze-mode ensemble is only valid with the exact base checkpoints it was trained on."""
    if cfg["ensemble"]["mode"] != "freeze":
        return  # finetune / simultaneous runs carry their own trained base weights
    for r in cfg["ensemble"]["resolved"]:
        path = Path(r["run"])
        if not path.is_file():
            raise CheckpointError(f"base {r['name']!r} checkpoint is gone; the meta run needs it unchanged", path)
        if file_sha256(path) != r["sha256"]:
            raise CheckpointError(f"base {r['name']!r} checkpoint changed since the meta-learner was trained "
                                  f"(sha256 {r['sha256'][:12]}…); retrain the meta-learner or restore the base", path)


def load_meta_run(path: Path, ckpt: dict, device: torch.device | str = "cpu"):
    """(StackedEnsemble in eval mode, cfg) from a meta checkpoint already read."""
    from meta_learner.training import build_ensemble

    cfg = ckpt["config"]
    check_bases_unchanged(cfg)
    ensemble = build_ensemble(cfg, init_weights=False)
    runs.load_state(ensemble, ckpt["model"], path, cfg["model"]["name"])
    return ensemble.to(device).eval(), cfg
