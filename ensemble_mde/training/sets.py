"""Ensemble sets: several runs of one base learner, trained by one command into one folder.

    spec = SetSpec("folds", folds=5)      # or SetSpec("seeds", seeds=[0, 1, 2]), SetSpec("holdout", holdout=0.3)
    folder = train_base_set("bts", spec, "runs/bts_cv5", preset="cpu")

A set folder holds normal run folders, its members, and `set.json` saying how they were made:

    seeds [S...]   members seed<S>: the same config, run.seed = S (the study's SAME set draws
                   a seed per member)
    folds K        members fold<k> (data.folds = K, data.fold = k: fold k of the training scenes
                   held out) and full (no scene held out); the partition is drawn by scene with
                   data.partition_seed (ensemble_mde.data.splits)
    holdout F      member holdout: round(F x training scenes) held out (data.holdout = F)

The scene-disjoint validation split stays outside every partition. set.json lists each
member's held-out scenes. Training the set again skips its finished members, resumes an
interrupted one with `resume`, and retrains all with `force`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ensemble_mde import config as config_mod
from ensemble_mde import runs
from ensemble_mde.errors import CheckpointError, ConfigError

SET_FILE = "set.json"
SET_FORMAT = "ensemble-mde-set/1"
KINDS = ("seeds", "folds", "holdout")


@dataclass
class SetSpec:
    """How a set is made: kind "seeds" (seeds: run seeds), "folds" (folds: K >= 2) or
    "holdout" (holdout: fraction in (0, 1)); partition_seed draws folds and holdouts."""
    kind: str
    seeds: list[int] = field(default_factory=list)
    folds: int = 0
    holdout: float = 0.0
    partition_seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"a set is made by {', '.join(KINDS)}, got {self.kind!r}", "set")
        if self.kind == "seeds" and (not self.seeds or len(set(self.seeds)) != len(self.seeds)
                                     or min(self.seeds) < 0):
            raise ConfigError(f"--seeds needs distinct seeds >= 0, got {self.seeds}", "--seeds")
        if self.kind == "folds" and self.folds < 2:
            raise ConfigError(f"--folds needs K >= 2, got {self.folds}", "--folds")
        if self.kind == "holdout" and not 0.0 < self.holdout < 1.0:
            raise ConfigError(f"--holdout needs a fraction in (0, 1), got {self.holdout}", "--holdout")

    @classmethod
    def of(cls, kind: str, value, partition_seed: int = 0) -> "SetSpec":
        """The spec of `kind` with its one value: seeds a list, folds K, holdout F."""
        return cls(kind, seeds=list(value) if kind == "seeds" else [], folds=int(value) if kind == "folds" else 0,
                   holdout=float(value) if kind == "holdout" else 0.0, partition_seed=int(partition_seed))

    def describe(self) -> dict:
        """What set.json records of the spec (only the keys of its kind)."""
        keep = {"seeds": ("seeds",), "folds": ("folds", "partition_seed"),
                "holdout": ("holdout", "partition_seed")}[self.kind]
        return {"kind": self.kind, **{k: v for k, v in asdict(self).items() if k in keep}}

    def members(self) -> list[tuple[str, list[config_mod.Setting]]]:
        """(member name, the settings that make it) in training order."""
        def setting(key, value):
            return config_mod.Setting(key, value, f"--{self.kind}")

        if self.kind == "seeds":
            return [(f"seed{s}", [setting("run.seed", int(s))]) for s in self.seeds]
        seed = setting("data.partition_seed", int(self.partition_seed))
        if self.kind == "holdout":
            return [("holdout", [setting("data.holdout", float(self.holdout)), seed])]
        folds = [(f"fold{k}", [setting("data.folds", int(self.folds)), setting("data.fold", k), seed])
                 for k in range(self.folds)]
        return folds + [("full", [setting("data.folds", 0), setting("data.fold", None)])]

    def default_folder_suffix(self) -> str:
        return {"seeds": "seeds", "folds": f"cv{self.folds}", "holdout": "holdout"}[self.kind]


def read_set(folder: str | Path) -> dict | None:
    """The set.json of `folder` (None when it is not a set folder)."""
    from ensemble_mde.io import read_json

    path = Path(folder) / SET_FILE
    if not path.is_file():
        return None
    info = read_json(path)
    if info.get("format") != SET_FORMAT:
        raise ConfigError(f"not a set file of this version (format {info.get('format')!r}, expected {SET_FORMAT})",
                          path)
    return info


def set_of_run(run: str | Path) -> tuple[str, str, dict] | None:
    """(set folder name, member name, the set's set.json) when the run folder (or a
    checkpoint in it) is a set member."""
    path = Path(run)
    folder = path.parent if path.suffix == ".pt" else path
    info = read_set(folder.parent) if folder.parent != folder else None
    if info is None or folder.name not in info["members"]:
        return None
    return folder.parent.name, folder.name, info


def member_runs(folder: str | Path, names=None) -> list[Path]:
    """The finished member run folders of a set (`names`: these members, in this order)."""
    folder = Path(folder)
    info = read_set(folder)
    if info is None:
        raise ConfigError(f"not a set folder (no {SET_FILE})", folder)
    chosen = list(names) if names is not None else list(info["members"])
    missing = [m for m in chosen if m not in info["members"] or not runs.RunFolder(folder / m).is_finished()]
    if missing:
        raise CheckpointError(f"member(s) {', '.join(missing)} of this set are not finished; train the set "
                              f"(ensemble train-base {info['learner']} --{info['kind']} ...) again", folder)
    return [folder / m for m in chosen]


def partition_digest(info: dict) -> str:
    """Short hash of how a set partitions the scenes (its spec and held-out scenes)."""
    text = repr((sorted(info["spec"].items()), sorted((k, tuple(v)) for k, v in info["held_out_scenes"].items())))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def train_base_set(name: str, spec: SetSpec, out: str | Path | None = None, *, config_file=None, overrides=(),
                   preset=None, settings=(), resume: bool = False, force: bool = False, progress: bool = True,
                   say=print) -> Path:
    """Train every member of the set `spec` of learner `name` into `out` (default
    <runs_dir>/<name>_<suffix>); finished members are skipped (retrained with `force`), an
    interrupted one needs `resume`. Returns the set folder."""
    from ensemble_mde.data.dataset import open_source
    from ensemble_mde.data.splits import held_out_scenes, training_scenes
    from ensemble_mde.io import atomic_write_json
    from ensemble_mde.training.base import base_config, train_base

    def member_config(extra):
        return base_config(name, config_file=config_file, overrides=overrides, preset=preset,
                           settings=[*settings, *extra])

    probe = member_config([])
    folder = Path(out) if out else Path(probe["run"]["runs_dir"]) / f"{name}_{spec.default_folder_suffix()}"
    members = spec.members()
    configs = {member: member_config([*extra, config_mod.Setting("run.runs_dir", str(folder), "set folder"),
                                      config_mod.Setting("run.name", member, "set member")])
               for member, extra in members}
    held = {}
    if spec.kind != "seeds":  # the partition keys leave the training scenes as they are: read them once
        scenes = [r.scene for r in training_scenes(open_source(probe["data"]), probe["data"])]
        held = {member: sorted(held_out_scenes(cfg["data"], scenes) or []) for member, cfg in configs.items()}
    info = {"format": SET_FORMAT, "learner": name, "kind": spec.kind, "spec": spec.describe(),
            "members": [m for m, _ in members], "held_out_scenes": held}
    existing = read_set(folder)
    if existing is not None and not force:
        mismatch = [k for k in ("learner", "kind", "spec", "members", "held_out_scenes") if existing.get(k) != info[k]]
        if mismatch:
            raise ConfigError(f"this folder holds another set ({mismatch[0]} differs: {existing.get(mismatch[0])} "
                              f"here, {info[mismatch[0]]} asked); choose another --out or pass --force", folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(info, folder / SET_FILE)
    for member, _ in members:
        run = runs.RunFolder(folder / member)
        if run.is_finished() and not force:
            say(f"skip {folder.name}/{member} (finished)")
            continue
        interrupted = run.last.is_file() and not run.is_finished()
        if interrupted and not (resume or force):
            raise CheckpointError(f"member {member} was interrupted; pass --resume to continue the set "
                                  "(finished members are skipped) or --force to retrain it all", run.path)
        say(f"{'resume' if interrupted and resume else 'train'} {folder.name}/{member}")
        _, summary = train_base(configs[member], resume=interrupted and resume, force=force, progress=progress)
        say(f"  {folder.name}/{member}: best {summary['best_metric']} {summary['best_value']:.4f}")
    return folder
