"""Run folders: `runs/<name>/` holding `config.yaml` (the resolved config, as the user's
layers made it), `record.json` (what training derived: the input size, a meta run's bases
and data), `metrics.jsonl`, `last.pt`, `best.pt`, `summary.json`. `RunFolder` owns those
files; `finished_runs` finds the finished ones.

A checkpoint holds the config and the record, so a run can be rebuilt from its folder (or
its .pt file) alone. In memory a run's config carries its record as `cfg["record"]` (a
section no config layer may set: see `with_record`).

Checkpoint payload (a plain dict, loadable with weights_only=True):
    format: "ensemble-mde/1", kind: "base" | "meta", learner: registry name,
    config: the config without its record, record: the record, model: state_dict, epoch,
    step, metrics, plus training state in last.pt (optimizer, scheduler, rng).
"""

from __future__ import annotations

import copy
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from ensemble_mde import config as config_mod
from ensemble_mde import distributed
from ensemble_mde.errors import CheckpointError, ConfigError, DataError
from ensemble_mde.io import (REWRITE_ADVICE, atomic_save, atomic_write_json, atomic_write_text, exclusive_lock,
                             load_checkpoint, read_json, read_jsonl)

CHECKPOINT_FORMAT = "ensemble-mde/1"
RECORD = "record"            # the derived-state section of a loaded config
LOCK_FILE = ".lock"          # held (fcntl.flock) by the process training into the run folder
STUDY_META_ENCODER = "ghostnet_100"  # the SG study's meta-learner encoder: meta_learner.weighting's default
# The kinds of metrics.jsonl lines and the numbers each holds that its readers use (compare's
# weighted baseline, the report's curves, a resume cutting the log back): any other line is damaged.
LOG_NUMBERS = {"train": ("epoch", "step", "total"), "val": ("epoch", "step", "rmse"), "skip": ("epoch", "step")}
SUMMARY_NUMBERS = ("train_seconds",)  # what compare reads from summary.json (null: not measured)


def _well_formed(entry: dict) -> bool:
    """A metrics.jsonl entry of a type in LOG_NUMBERS whose numbers are numbers."""
    numbers = LOG_NUMBERS.get(entry.get("type"))
    return numbers is not None and all(config_mod._is_number(entry.get(key)) for key in numbers)


def with_record(cfg: dict, record: dict | None = None) -> dict:
    """`cfg` with its record section set (to `record`, or kept / empty), in place."""
    if record is not None:
        cfg[RECORD] = dict(record)
    cfg.setdefault(RECORD, {})
    return cfg


def without_record(cfg: dict) -> tuple[dict, dict]:
    """(a copy of the config without its record, the record)."""
    user = copy.deepcopy({k: v for k, v in cfg.items() if k != RECORD})
    return user, copy.deepcopy(cfg.get(RECORD) or {})


class RunFolder:
    """The files of one run. `path`: the folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file = self.path / "config.yaml"
        self.record_file = self.path / "record.json"
        self.metrics_file = self.path / "metrics.jsonl"
        self.summary_file = self.path / "summary.json"
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"

    # what a run writes before its first checkpoint, and what a finished run holds
    def started_files(self) -> list[Path]:
        return [self.config_file, self.record_file, self.metrics_file]

    def outputs(self) -> list[Path]:
        return [*self.started_files(), self.last, self.best, self.summary_file]

    def is_finished(self) -> bool:
        """summary.json and best.pt: a run that completed its epochs."""
        return self.summary_file.is_file() and self.best.is_file()

    def holds_a_run(self) -> list[str]:
        return [p.name for p in (self.best, self.last, self.summary_file) if p.exists()]

    def write_config(self, cfg: dict) -> None:
        """config.yaml (the user's keys) and record.json (the derived state), atomically."""
        user, record = without_record(cfg)
        atomic_write_text(config_mod.dump(user), self.config_file)
        atomic_write_json(record, self.record_file)

    def read_config(self) -> dict:
        """The saved config with its record (older folders: derived keys moved into it); a
        ConfigError naming config.yaml when it lacks a section every run has (empty, cut short)."""
        cfg = config_mod.upgrade_saved(config_mod.read_yaml(self.config_file))
        missing = [section for section in ("run", "model", "data") if not isinstance(cfg.get(section), dict)]
        if missing:
            raise ConfigError(f"not a run config (no {missing[0]} section: empty or cut short); delete it, the run's "
                              "checkpoint holds its config too", self.config_file)
        if self.record_file.is_file():
            with_record(cfg, read_json(self.record_file))
        return with_record(cfg)

    def log(self, entry: dict) -> None:
        with open(self.metrics_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def log_entries(self) -> tuple[list[dict], list[int]]:
        """(metrics.jsonl entries, numbers of the damaged lines skipped: not a JSON object, as
        the half-written last line of a crash, or without the LOG_NUMBERS of its type)."""
        return read_jsonl(self.metrics_file, accept=_well_formed) if self.metrics_file.is_file() else ([], [])

    def truncate_log_after(self, step: int) -> None:
        """Drop entries logged after `step` (by a run that died after its last checkpoint), and
        a half-written line such a death can leave."""
        if self.metrics_file.exists():
            entries, _ = self.log_entries()
            self.metrics_file.write_text("".join(json.dumps(e) + "\n" for e in entries if e["step"] <= step))

    def save(self, payload: dict, which: str) -> None:
        """last.pt or best.pt (which = "last" | "best"), atomically."""
        atomic_save(payload, self.last if which == "last" else self.best)

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(summary, self.summary_file)

    def summary(self) -> dict:
        """summary.json; a DataError naming it when it is not a JSON object whose SUMMARY_NUMBERS
        are numbers (or null): it is written atomically, so such damage came from outside."""
        summary = read_json(self.summary_file)
        if not isinstance(summary, dict):
            problem = "not a JSON object"
        else:
            bad = [k for k in SUMMARY_NUMBERS if summary.get(k) is not None and not config_mod._is_number(summary[k])]
            problem = f"{bad[0]} is {summary[bad[0]]!r}, not a number" if bad else None
        if problem:
            raise DataError(f"not a run summary ({problem}); {REWRITE_ADVICE}", self.summary_file)
        return summary

    def discard_unstarted(self) -> None:
        """After a failure before any checkpoint: remove what the run wrote (and the folder,
        when that leaves it empty), so bad input leaves nothing half-made."""
        if self.last.exists() or self.best.exists():
            return
        for path in self.started_files():
            path.unlink(missing_ok=True)
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    @contextmanager
    def training(self, *, resume: bool = False, force: bool = False,
                 resumable: bool = True) -> Iterator["RunFolder"]:
        """While a run trains (or is written) into the folder: an exclusive lock on it, so a
        second process gets one line naming the first one's pid instead of interleaving its
        metrics and replacing its checkpoints (rank 0 alone under torchrun: the other ranks
        write nothing). A folder that holds a run is refused unless `resume` (continue it from
        its last.pt) or `force` (its files are removed first); resumable=False: the command
        has no --resume (import-weights). Folders made here (the run folder, a new runs_dir)
        are removed again if the run left nothing in them."""
        if not distributed.is_main():
            yield self
            return
        made = [folder for folder in (self.path, *self.path.absolute().parents) if not folder.exists()]
        try:
            with exclusive_lock(self.path / LOCK_FILE, f"run folder {self.path}",
                                "wait for that run to finish, or choose another --out"):
                held = self.holds_a_run()
                if held and not (resume and self.last.is_file()):
                    if not force:
                        if resume:  # it would start afresh and overwrite what the folder holds
                            raise CheckpointError(f"run folder holds a run ({', '.join(held)}) but no last.pt to "
                                                  "resume it from; pass --force to overwrite it", self.path)
                        advice = "pass --resume to continue it or --force" if resumable else "pass --force"
                        raise CheckpointError(f"run folder already holds a run ({', '.join(held)}); {advice} "
                                              "to overwrite it", self.path)
                    for path in self.outputs():
                        path.unlink(missing_ok=True)
                yield self
        finally:
            for folder in made:  # the run folder first, then the new folders above it
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()


def model_input_size(cfg: dict) -> tuple[int, int] | None:
    """[H, W] a run's model sees: data.size, else the frame size training recorded."""
    size = cfg["data"].get("size") or cfg.get(RECORD, {}).get("input_size")
    return tuple(int(v) for v in size) if size else None


def data_view(cfg: dict) -> dict:
    """`cfg` with `data` the section the run trains and is evaluated on: its record's (a meta
    run that named no dataset trains on its bases' data) or its own. The other sections are
    cfg's own dicts."""
    trained = cfg.get(RECORD, {}).get("data")
    return {**cfg, "data": trained} if trained else cfg


def run_dir_for(cfg: dict, default_name: str) -> Path:
    """runs_dir/name from the config (name defaults to `default_name`). The name is a folder
    inside runs_dir (it may nest: "ablation/adabins"); one that leaves it ("..", "/abs") or is
    runs_dir itself (".") is refused, since run folders are found by listing runs_dir."""
    name = cfg["run"].get("name") or default_name
    parts = Path(name).parts
    if Path(name).is_absolute() or not parts or ".." in parts or set(parts) == {"."}:
        raise ConfigError(f"run.name {name!r} must name a folder inside run.runs_dir, like 'adabins_lr3e-4'",
                          "run.name")
    return Path(cfg["run"]["runs_dir"]) / name


def meta_variant(cfg: dict) -> list[str]:
    """What tells a meta variant apart, e.g. ["rgb+d", "freeze", "live", "mobilenetv2_100",
    "relaxed", "oof"]: inputs and mode, then what differs from the study's network (a GhostNet
    encoder, the softmax head), from our cached freeze mode and from in-sample stacking. `.get`: configs of runs
    made before these keys existed."""
    meta, ensemble = cfg["meta"], cfg["ensemble"]
    parts = [meta["inputs"], ensemble["mode"]]
    if ensemble["mode"] == "freeze" and ensemble.get("base_inputs", "cached") == "live":
        parts.append("live")
    if meta.get("encoder", STUDY_META_ENCODER) != STUDY_META_ENCODER:
        parts.append(meta["encoder"])
    if meta.get("head", "softmax") != "softmax":
        parts.append(meta["head"])
    stacking = ensemble.get("stacking", "in-sample")
    if stacking != "in-sample":
        parts.append(stacking + ("-foldmean" if stacking == "oof" and ensemble.get("oof_test") == "folds" else ""))
    return parts


def run_name(cfg: dict) -> str:
    """A meta run's default folder name, e.g. meta_rgbd_freeze or meta_rgbd_freeze_live_relaxed."""
    return "_".join(["meta", *(part.replace("+", "") for part in meta_variant(cfg))])


def finished_runs(runs_dir: str | Path, learners=None) -> list[Path]:
    """The finished run folders directly under `runs_dir`, sorted; with `learners`, only runs
    of those learners, the newest (by summary.json) of each, in the order of `learners`."""
    folders = sorted(p.parent for p in Path(runs_dir).glob("*/summary.json") if RunFolder(p.parent).is_finished())
    if learners is None:
        return folders
    newest: dict[str, Path] = {}
    for folder in folders:
        run = RunFolder(folder)
        name = (config_mod.read_yaml(run.config_file).get("model") or {}).get("name") \
            if run.config_file.is_file() else None
        if name in learners and (name not in newest or
                                 run.summary_file.stat().st_mtime > RunFolder(newest[name]).summary_file.stat().st_mtime):
            newest[name] = folder
    return [newest[name] for name in learners if name in newest]


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


def resume_config(run_dir: Path, cfg: dict, kind: str = "base") -> dict:
    """The config (with its record) a run was started with (a resumed run continues with
    it), after checking that its last.pt is a `kind` run of the learner `cfg` asks for."""
    path = RunFolder(run_dir).last
    ckpt = read_checkpoint(path)
    found_kind, found, wanted = ckpt.get("kind", "base"), ckpt.get("learner"), cfg["model"]["name"]
    if found_kind != kind or found != wanted:
        raise CheckpointError(f"holds a {found_kind} run of {found!r}; cannot resume a {kind} run of {wanted!r} "
                              "from it (resume with that run's own command, or choose another --out)", path)
    return ckpt["config"]


def ignored_on_resume(run_dir: Path, overrides: list[str] = (),
                      settings: list[config_mod.Setting] = ()) -> list[str]:
    """The `key=value` overrides (--set) and settings (the option flags) that a resume of
    `run_dir` will not apply, each as "key=value (the run has X)": a resumed run continues
    with the config saved in its last.pt. run.runs_dir and run.name only locate the run.
    Empty when there is no last.pt (the run starts afresh with every override)."""
    path = RunFolder(run_dir).last
    if not path.is_file():
        return []
    saved, _ = without_record(read_checkpoint(path)["config"])
    asked = [(text.split("=", 1)[0].strip(), config_mod.parse_override(text), f"--set {text}") for text in overrides]
    asked += [(s.key, config_mod.nest(s.key, s.value), s.source) for s in settings]
    ignored = []
    for key, tree, source in asked:
        if key in ("run.runs_dir", "run.name"):
            continue
        requested = config_mod.merge(saved, tree, strict=True, source=source)
        value, kept = config_mod.get(requested, key), config_mod.get(saved, key)
        if value != kept:
            ignored.append(f"{key}={value} (the run has {kept})")
    return ignored


def checkpoint_payload(model: torch.nn.Module, cfg: dict, *, kind: str = "base", **extra) -> dict:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    user, record = without_record(cfg)
    return {"format": CHECKPOINT_FORMAT, "kind": kind, "learner": user["model"]["name"],
            "config": user, RECORD: record, "model": state, **extra}


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
    """An ensemble-mde checkpoint; its config in today's keys (`config.upgrade_saved`), with
    its record."""
    ckpt = load_checkpoint(path)
    found = ckpt.get("format") if isinstance(ckpt, dict) else None
    if found != CHECKPOINT_FORMAT:
        ours = isinstance(found, str) and found.split("/")[0] == CHECKPOINT_FORMAT.split("/")[0]
        raise CheckpointError(f"saved by another version of ensemble-mde (format {found}; this version reads "
                              f"{CHECKPOINT_FORMAT}); load it with the version that wrote it" if ours else
                              f"not an ensemble-mde checkpoint (expected format {CHECKPOINT_FORMAT})", path)
    if isinstance(ckpt.get("config"), dict):
        with_record(config_mod.upgrade_saved(ckpt["config"]), ckpt.get(RECORD))
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
    # training never saves a non-finite step (engine skips it), so NaN/inf here is damage or a bad
    # import: refused, rather than predicting NaN depth that a PNG would store as 0
    broken = [k for k in own if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all())]
    if broken:
        raise CheckpointError(f"weights hold NaN or inf in {len(broken)} tensor(s): {', '.join(broken[:4])}"
                              f"{' ...' if len(broken) > 4 else ''}; retrain or re-import them", path)
    model.load_state_dict(state)
