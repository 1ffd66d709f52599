"""Run folders: `runs/<name>/` with `config.yaml` (fully resolved), `best.pt`, `last.pt`,
`metrics.jsonl`, `summary.json`. A checkpoint holds the resolved config, so a run can be
rebuilt from its folder (or its .pt file) alone.

Checkpoint payload (a plain dict, loadable with weights_only=True):
    format: "ensemble-mde/1", kind: "base" | "meta", learner: registry name,
    config: resolved config, model: state_dict, epoch, step, metrics,
    plus training state in last.pt (optimizer, scheduler, rng).
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from ensemble_mde import config as config_mod
from ensemble_mde import distributed
from ensemble_mde.errors import CheckpointError, ConfigError, EnsembleError, ModelError
from ensemble_mde.io import atomic_write_text, exclusive_lock, load_checkpoint

CHECKPOINT_FORMAT = "ensemble-mde/1"
LOCK_FILE = ".lock"          # held (fcntl.flock) by the process training into the run folder
FINISHED_RUN_FILES = ("best.pt", "last.pt", "summary.json")
RUN_OUTPUTS = (*FINISHED_RUN_FILES, "metrics.jsonl", "config.yaml")


def run_dir_for(cfg: dict, default_name: str) -> Path:
    """runs_dir/name from the config (name defaults to `default_name`)."""
    name = cfg["run"].get("name") or default_name
    return Path(cfg["run"]["runs_dir"]) / name


def check_writable(run_dir: Path) -> None:
    """Fail before any work when the run folder cannot be created or written (its nearest
    existing ancestor must be a folder that takes a new file)."""
    folder = Path(run_dir).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"cannot create run folder {folder}: {existing} is a file; choose another --out "
                          "or run.runs_dir", existing)
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write run folder {folder} ({e.strerror}); choose another --out or "
                          "run.runs_dir", existing) from None


@contextmanager
def training_into(run_dir: Path, *, resume: bool = False, force: bool = False) -> Iterator[None]:
    """While a run trains into `run_dir`: an exclusive lock on the folder, so a second process
    gets one line naming the first one's pid instead of interleaving its metrics and replacing
    its checkpoints (rank 0 alone under torchrun: the other ranks write nothing). A folder
    that holds a run is refused unless `resume` (continue it) or `force` (its files are
    removed first). Folders made here (the run folder, a new runs_dir) are removed again if
    the run left nothing in them."""
    run_dir = Path(run_dir)
    if not distributed.is_main():
        yield
        return
    made = [folder for folder in (run_dir, *run_dir.absolute().parents) if not folder.exists()]
    try:
        with exclusive_lock(run_dir / LOCK_FILE, f"run folder {run_dir}",
                            "wait for that run to finish, or choose another --out"):
            held = [name for name in FINISHED_RUN_FILES if (run_dir / name).exists()]
            if held and not resume:
                if not force:
                    raise CheckpointError(f"run folder already holds a run ({', '.join(held)}); pass --resume to "
                                          "continue it or --force to overwrite it", run_dir)
                for name in RUN_OUTPUTS:
                    (run_dir / name).unlink(missing_ok=True)
            yield
    finally:
        for folder in made:  # the run folder first, then the new folders above it
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def resume_config(run_dir: Path, cfg: dict, kind: str = "base") -> dict:
    """The config a run was started with (a resumed run continues with it), after checking
    that its last.pt is a `kind` run of the learner `cfg` asks for."""
    path = Path(run_dir) / "last.pt"
    ckpt = read_checkpoint(path)
    found_kind, found, wanted = ckpt.get("kind", "base"), ckpt.get("learner"), cfg["model"]["name"]
    if found_kind != kind or found != wanted:
        raise CheckpointError(f"holds a {found_kind} run of {found!r}; cannot resume a {kind} run of {wanted!r} "
                              "from it (resume with that run's own command, or choose another --out)", path)
    return ckpt["config"]


def ignored_on_resume(run_dir: Path, overrides: list[str]) -> list[str]:
    """The `key=value` overrides (--set and the option flags) that a resume of `run_dir`
    will not apply, each as "key=value (the run has X)": a resumed run continues with the
    config saved in its last.pt. run.runs_dir and run.name only locate the run. Empty
    when there is no last.pt (the run starts afresh with every override)."""
    path = Path(run_dir) / "last.pt"
    if not path.is_file():
        return []
    saved = read_checkpoint(path)["config"]
    ignored = []
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if key in ("run.runs_dir", "run.name"):
            continue
        requested = config_mod.merge(saved, config_mod.parse_override(text), strict=True, source=f"--set {text}")
        value, kept = config_mod.get(requested, key), config_mod.get(saved, key)
        if value != kept:
            ignored.append(f"{key}={value} (the run has {kept})")
    return ignored


def write_run_config(run_dir: Path, cfg: dict) -> None:
    atomic_write_text(config_mod.dump(cfg), Path(run_dir) / "config.yaml")


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


def checkpoint_payload(model: torch.nn.Module, cfg: dict, *, kind: str = "base", **extra) -> dict:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"format": CHECKPOINT_FORMAT, "kind": kind, "learner": cfg["model"]["name"],
            "config": cfg, "model": state, **extra}


def resolve_checkpoint(run: str | Path, which: str = "best") -> Path:
    """A run folder (-> its best.pt, else last.pt) or a checkpoint file."""
    path = Path(run)
    if path.is_dir():
        for name in (f"{which}.pt", "best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError("run folder holds no best.pt or last.pt", path)
    if path.is_file():
        return path
    raise CheckpointError("no run folder or checkpoint at this path", path)


def read_checkpoint(path: Path) -> dict:
    """An ensemble-mde checkpoint; its config in today's keys (`config.upgrade_saved`)."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"not an ensemble-mde checkpoint (expected format {CHECKPOINT_FORMAT})", path)
    if isinstance(ckpt.get("config"), dict):
        config_mod.upgrade_saved(ckpt["config"])
    return ckpt


def load_state(model: torch.nn.Module, state: dict, path: Path, learner: str) -> None:
    """load_state_dict(strict) with a one-line error naming both learners and the keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shape)):
            if keys:
                parts.append(f"{label} {len(keys)}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}")
        raise CheckpointError(
            f"checkpoint does not fit learner {type(model).__name__} built as {learner!r} ({'; '.join(parts)})", path
        )
    model.load_state_dict(state)


def load_run(run: str | Path, which: str = "best", device: str | torch.device = "cpu"):
    """Rebuild a base learner from its run folder or checkpoint: (model in eval mode, cfg, ckpt)."""
    path = resolve_checkpoint(run, which)
    ckpt = read_checkpoint(path)
    cfg = ckpt["config"]
    if ckpt.get("kind", "base") != "base":
        raise EnsembleError(f"{ckpt.get('kind')!r} runs are loaded with their own loader", path)
    model = build_learner(cfg, init_weights=False)
    load_state(model, ckpt["model"], path, cfg["model"]["name"])
    return model.to(device).eval(), cfg, ckpt
