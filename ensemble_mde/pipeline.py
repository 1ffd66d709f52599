"""The Python API behind the CLI: resolve a config, train a base learner, load any run.

    cfg = base_config("adabins", preset="cpu", overrides=["train.epochs=2"])
    run_dir, summary = train_base(cfg)
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from ensemble_mde import config as config_mod
from ensemble_mde import distributed, runs
from ensemble_mde.data import loader_workers
from ensemble_mde.device import resolve_device
from ensemble_mde.engine import train
from ensemble_mde.errors import ConfigError, DataError


def base_config(name: str, *, config_file=None, overrides=(), preset=None) -> dict:
    """Resolved config of base learner `name`: defaults < base/<name> < preset < file < overrides."""
    import base_learners

    if name not in base_learners.available():
        base_learners.create(name)  # raises the ModelError that names the closest learner
    cfg = config_mod.load_config(["defaults", f"base/{name}"], config_file, overrides, preset)
    return finalize_paths(cfg)


def finalize_paths(cfg: dict) -> dict:
    """Make data and weight paths absolute, so a run folder works from any directory; a
    weights file named in the config (model./meta.pretrained) must exist."""
    if cfg["data"]["path"] is None:  # e.g. an imported run, which was trained on no data of ours
        raise ConfigError("no dataset is set (data.path is null); pass --data PATH", "data.path")
    cfg["data"]["path"] = str(Path(cfg["data"]["path"]).expanduser().resolve())
    for key in ("train_list", "test_list", "train_root", "test_root"):
        if cfg["data"].get(key):
            cfg["data"][key] = str(Path(cfg["data"][key]).expanduser().resolve())
    for section in ("model", "meta"):
        weights = (cfg.get(section) or {}).get("pretrained")
        if isinstance(weights, str):
            path = Path(weights).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"pretrained weights file not found ({section}.pretrained)", path)
            cfg[section]["pretrained"] = str(path)
    return cfg


def preflight(cfg: dict, run_dir: Path) -> None:
    """Before any work: the dataset path exists, data.workers is valid and the run folder
    can be written (weights paths are checked by `finalize_paths`)."""
    if not Path(cfg["data"]["path"]).exists():
        raise DataError("no such file or folder (data.path)", cfg["data"]["path"])
    loader_workers(cfg["data"])
    runs.check_writable(run_dir)


def cli_overrides(args) -> list[str]:
    """Shortcut flags of the training commands as `key=value` overrides, after the --set
    ones. A flag and a --set of the same key is a ConfigError (neither silently wins)."""
    pairs = [("data", "data.path"), ("epochs", "train.epochs"), ("batch_size", "train.batch_size"),
             ("lr", "train.lr"), ("seed", "run.seed"), ("device", "run.device")]
    flags = [(attr, f"{key}={getattr(args, attr)}") for attr, key in pairs if getattr(args, attr, None) is not None]
    if getattr(args, "size", None):
        from ensemble_mde.cli import parse_size

        h, w = parse_size(args.size)
        flags.append(("size", f"data.size=[{h}, {w}]"))
    if getattr(args, "out", None):
        out_path = Path(args.out)
        flags += [("out", f"run.runs_dir={out_path.parent.as_posix() or '.'}"), ("out", f"run.name={out_path.name}")]
    if getattr(args, "selectivity", None):
        flags.append(("selectivity", f"selectivity.layers=[{args.selectivity}]"))
    if getattr(args, "alpha", None) is not None:
        flags.append(("alpha", f"selectivity.alpha={args.alpha}"))
    set_keys = {text.split("=", 1)[0].strip(): text for text in args.overrides}
    for attr, text in flags:
        key = text.split("=", 1)[0]
        if key in set_keys:
            flag = "--" + attr.replace("_", "-")
            raise ConfigError(f"{flag} and --set {set_keys[key]} both set {key}; give one of them", key)
    return list(args.overrides) + [text for _, text in flags]


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


def train_base(cfg: dict, *, resume: bool = False, force: bool = False, progress: bool = True):
    """Train the base learner `cfg` describes; returns (run folder, summary). A folder that
    holds a run needs resume (continue it) or force (overwrite it). Under torchrun every
    process calls this (DistributedDataParallel; rank 0 writes the run)."""
    device = distributed.init(resolve_device(cfg["run"]["device"]))
    run_dir = runs.run_dir_for(cfg, cfg["model"]["name"])
    if resume and (run_dir / "last.pt").is_file():
        cfg = runs.resume_config(run_dir, cfg, kind="base")
    preflight(cfg, run_dir)
    with runs.training_into(run_dir, resume=resume, force=force):
        train_set, val_set, eigen_crop = build_splits(cfg)
        if not cfg["run"].get("input_size") and not cfg["data"].get("size"):
            cfg["run"]["input_size"] = list(val_set[0]["rgb"].shape[-2:])
        torch.manual_seed(int(cfg["run"]["seed"]))  # identical initial weights for a given seed
        model = runs.build_learner(cfg)
        with selectivity_term(model, cfg) as extra:
            summary = train(model, cfg, train_set, val_set, run_dir, device=device, eigen_crop=eigen_crop,
                            resume=resume, progress=progress, extra_loss=extra)
    return run_dir, summary


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
