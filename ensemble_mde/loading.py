"""Models from configs and checkpoints: a base learner, a stacked ensemble, any run, or a
packaged learner by name. A model rebuilt for a checkpoint never fetches initial
(ImageNet) weights: the checkpoint replaces them."""

from __future__ import annotations

from pathlib import Path

import torch

from ensemble_mde import config as config_mod
from ensemble_mde import runs
from ensemble_mde.runs import model_input_size
from ensemble_mde.errors import CheckpointError, EnsembleError, ModelError
from ensemble_mde.io import file_sha256

META_TARGET = "meta"
# model keys of the GhostNet learners before they took the SG study's layout (2026-12)
PRE_STUDY_LAYOUT_KEYS = ("decoder_widths", "widths", "aspp_widths", "level_widths")


def model_kwargs(cfg: dict, init_weights: bool = True) -> dict:
    """The `model:` section without its `name` key: the learner's constructor arguments.
    init_weights=False: no initial (ImageNet) weights are fetched, for a model whose
    checkpoint replaces them."""
    kwargs = {k: v for k, v in cfg["model"].items() if k != "name"}
    old = [k for k in PRE_STUDY_LAYOUT_KEYS if k in kwargs]
    if old:
        raise ModelError(f"model.{old[0]}: this {cfg['model']['name']} run was made before the learner took the "
                         "SG study's layout; its weights do not fit today's network: train it again", old[0])
    if not init_weights and "pretrained" in kwargs:
        kwargs["pretrained"] = False
    return kwargs


def build_learner(cfg: dict, init_weights: bool = True):
    """A fresh learner as the config's `model:` section describes it (init_weights: see
    `model_kwargs`)."""
    import base_learners

    return base_learners.create(cfg["model"]["name"], **model_kwargs(cfg, init_weights))


def load_run(run: str | Path, which: str = "best", device: str | torch.device = "cpu"):
    """Rebuild a base learner from its run folder or checkpoint: (model in eval mode, cfg, ckpt)."""
    path = runs.resolve_checkpoint(run, which)
    ckpt = runs.read_checkpoint(path)
    cfg = ckpt["config"]
    if ckpt.get("kind", "base") != "base":
        raise EnsembleError(f"{ckpt.get('kind')!r} runs are loaded with their own loader", path)
    model = build_learner(cfg, init_weights=False)
    runs.load_state(model, ckpt["model"], path, cfg["model"]["name"])
    return model.to(device).eval(), cfg, ckpt


def build_ensemble(cfg: dict, init_weights: bool = True):
    """The stacked ensemble a meta run's record describes (its bases), before any checkpoint
    is loaded. Bases that come from a run get no initial weights (theirs replace them); fresh
    ones (simultaneous mode) get their config's, as does the meta-learner, when init_weights."""
    import base_learners
    from meta_learner.ensemble import MeanOfMembers, StackedEnsemble
    from meta_learner.weighting import build_weighting

    bases_record = cfg[runs.RECORD]["bases"]

    def base(r):
        def learner():
            return base_learners.create(r["model"]["name"], **model_kwargs(
                {"model": r["model"]}, init_weights=init_weights and not r["run"]))
        return MeanOfMembers([learner() for _ in r["members"]]) if r.get("members") else learner()

    bases = [base(r) for r in bases_record]
    meta = build_weighting(cfg, len(bases), init_weights)
    return StackedEnsemble(bases, meta, [r["name"] for r in bases_record], mode=cfg["ensemble"]["mode"],
                           min_depth=cfg["data"]["min_depth"], max_depth=cfg["data"]["max_depth"],
                           input_sizes=[r.get("input_size") for r in bases_record], grid_size=model_input_size(cfg))


def base_checkpoints(r: dict, with_oof: bool = False) -> list[tuple[Path, str]]:
    """(checkpoint, sha256) a base record entry is made of: its run, or the members it
    averages; with_oof also the fold models that filled its out-of-fold cache."""
    parts = r.get("members") or ([{"run": r["run"], "sha256": r["sha256"]}] if r.get("run") else [])
    if with_oof and r.get("oof"):
        parts = [*parts, *r["oof"]["members"]]
    return [(Path(p["run"]), p["sha256"]) for p in parts]


def load_base_weights(ensemble, bases_record: list[dict]) -> None:
    """Copy each trained base's checkpoint weights into the ensemble (fresh names stay random;
    a mean-of-members base loads each member)."""
    for base, r in zip(ensemble.bases, bases_record):
        models = list(base.members) if r.get("members") else [base]
        for model, (path, _) in zip(models, base_checkpoints(r)):
            runs.load_state(model, runs.read_checkpoint(path)["model"], path, r["model"]["name"])


def check_bases_unchanged(cfg: dict) -> None:
    """A freeze-mode ensemble is only valid with the exact base checkpoints it was trained on
    (out-of-fold stacking: the fold models too)."""
    if cfg["ensemble"]["mode"] != "freeze":
        return  # finetune / simultaneous runs carry their own trained base weights
    for r in cfg[runs.RECORD]["bases"]:
        for path, sha in base_checkpoints(r, with_oof=True):
            if not path.is_file():
                raise CheckpointError(f"base {r['name']!r} checkpoint is gone; the meta run needs it unchanged", path)
            if file_sha256(path) != sha:
                raise CheckpointError(f"base {r['name']!r} checkpoint changed since the meta-learner was trained "
                                      f"(sha256 {sha[:12]}…); retrain the meta-learner or restore the base", path)


def load_meta_run(path: Path, ckpt: dict, device: torch.device | str = "cpu"):
    """(StackedEnsemble in eval mode, cfg) from a meta checkpoint already read."""
    cfg = ckpt["config"]
    check_bases_unchanged(cfg)
    ensemble = build_ensemble(cfg, init_weights=False)
    runs.load_state(ensemble, ckpt["model"], path, cfg["model"]["name"])
    return ensemble.to(device).eval(), cfg


def load_any_run(run: str | Path, device: torch.device | str = "cpu", which: str = "best",
                 for_inference: bool = False):
    """(model in eval mode on `device`, resolved config with its record) for a run folder or
    checkpoint. for_inference: on the fast path (ensemble_mde.speed: BatchNorm folded,
    channels_last); such a model must not be trained."""
    path = runs.resolve_checkpoint(run, which)
    ckpt = runs.read_checkpoint(path)
    if ckpt.get("kind") == "meta":
        model, cfg = load_meta_run(path, ckpt, device=device)
    else:
        model, cfg, _ = load_run(path, device=device)
    if for_inference:
        from ensemble_mde.speed import prepare_for_inference

        prepare_for_inference(model)
    return model, cfg


def packaged_learner(name: str, num_learners: int = 3, overrides=()):
    """A freshly initialised learner from its packaged config and `key=value` overrides:
    (model, cfg); no initial weights are fetched. The name "meta" gives the weighting network
    alone for `num_learners` bases (configs/meta/weighting.yaml)."""
    import base_learners

    if name == META_TARGET:
        from meta_learner.weighting import WeightingOnRgb, build_weighting

        cfg = config_mod.load_config(["defaults", "meta/weighting"], overrides=overrides)
        network = build_weighting(cfg, num_learners, init_weights=False)
        return WeightingOnRgb(network, cfg["data"]["max_depth"]).eval(), runs.with_record(cfg)

    if name not in base_learners.available():
        base_learners.create(name)  # raises the ModelError naming the closest learner
    cfg = config_mod.load_config(["defaults", f"base/{name}"], overrides=overrides)
    return build_learner(cfg, init_weights=False).eval(), runs.with_record(cfg)
