"""A whole study from one YAML file: data, base learners, meta-learner variants, comparison.

    experiment = load_experiment("configs/experiments/demo.yaml", out="demo")
    result = run_experiment(experiment)          # trains what is missing, compares, writes report.md

File layout (every key optional except `bases`; see configs/experiments/demo.yaml):

    name: demo
    out: demo                  # experiment folder: data/ (synthetic), runs/, report/, experiment.json
    device: auto
    data:
      path: null               # an existing dataset, or
      synth: {train: 96, val: 16, test: 24, size: [64, 96], seed: 0}   # rendered into <out>/data
    bases:                     # one run per learner and seed: <out>/runs/<run_name or name>[_s<seed>]
      - {name: adabins, preset: cpu, overrides: {train.epochs: 2}, seeds: [0]}
      - {name: bts, run_name: bts_cv, set: {folds: 3, partition_seed: 0}}   # a set (training/sets.py):
                                # set: {seeds: [0, 1, 2]} | {folds: K} | {holdout: F}, in <out>/runs/<label>
    meta:                      # one run per variant and seed, over the bases of the same seed
      - {inputs: rgb+d, mode: freeze, bases: null, preset: null, overrides: {}, seeds: [0],
         stacking: in-sample, oof_test: full}   # bases: labels, a set's label, or label/member (bts_cv/full)
    compare: {split: test, baselines: [mean, median, weighted, oracle, convex], bootstrap: 1000,
              uncertainty: false}   # uncertainty: `compare --uncertainty` (AUSE table, curves)

Steps run through the Python API (ensemble_mde.training.base, ensemble_mde.training.meta). Each
training step records its inputs when it starts, in <out>/steps.json: its resolved config,
the dataset's fingerprint and (meta) the sha256 of each base checkpoint. A run with
summary.json is finished and skipped, one with last.pt is resumed, when those inputs are
still the same; otherwise it is stale: the experiment says which inputs changed and trains
it again from the start. Any other run is trained. Relative paths are relative to the
current directory. `overrides` is a mapping of dotted keys (or nested sections) to values,
or a list of "key=value" strings.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ensemble_mde import config as config_mod
from ensemble_mde.errors import ConfigError

SCHEMA = {
    "name": "experiment",
    "out": None,
    "device": "auto",
    "data": {"path": None, "synth": None},
    "bases": [],
    "meta": [],
    "compare": {"split": "test", "baselines": ["mean", "median", "weighted", "oracle", "convex"], "bootstrap": 1000,
                "bootstrap_seed": 0, "flip_tta": False, "figure_images": 3, "measure": True, "repeats": 10,
                "silog": False, "uncertainty": False},
}
SYNTH_SCHEMA = {"train": 2000, "val": 200, "test": 200, "size": [240, 320], "seed": 0}
BASE_SCHEMA = {"name": None, "run_name": None, "preset": None, "config": None, "overrides": None, "seeds": [0],
               "set": None}
SET_SCHEMA = {"seeds": None, "folds": None, "holdout": None, "partition_seed": 0}
META_SCHEMA = {"inputs": "rgb+d", "mode": "freeze", "bases": None, "run_name": None, "preset": None,
               "config": None, "overrides": None, "seeds": [0], "stacking": "in-sample", "oof_test": "full"}
# What the keys accept beyond their type (the form of configs/rules.yaml), checked when the
# file is read: the compare step comes after all training. split and baselines: the names
# of ensemble_mde.data.splits.SPLITS and ensemble_mde.compare.BASELINE_NAMES.
NAME = {"type": "str", "nullable": True}
RULES = {"name": {"type": "str"}, "out": NAME, "device": {"type": "str"}, "data": {"path": NAME},
         "compare": {"split": {"choices": ["train", "val", "test"]},
                     "baselines": {"choices": ["mean", "median", "weighted", "oracle", "convex"]},
                     "bootstrap": {"min": 0}, "bootstrap_seed": {"min": 0}, "figure_images": {"min": 0},
                     "repeats": {"min": 1}}}
SYNTH_RULES = {"train": {"min": 1}, "val": {"min": 0}, "test": {"min": 0}, "seed": {"min": 0},
               "size": {"length": 2, "of": "int", "min": 1}}
SEEDS = {"of": "int", "min": 0}
BASE_RULES = {"name": {"type": "str"}, "run_name": NAME, "preset": NAME, "config": NAME, "seeds": SEEDS}
SET_RULES = {"seeds": {"type": "list", "nullable": True, **SEEDS}, "folds": {"type": "int", "nullable": True, "min": 2},
             "holdout": {"type": "float", "nullable": True, "above": 0, "below": 1}, "partition_seed": {"min": 0}}
META_RULES = {"run_name": NAME, "preset": NAME, "config": NAME,
              "bases": {"type": "list", "of": "str", "nullable": True}, "seeds": SEEDS,
              "stacking": {"choices": ["in-sample", "holdout", "oof"]}, "oof_test": {"choices": ["full", "folds"]}}
STEPS_FILE = "steps.json"  # <out>/steps.json: {step label: the inputs it was started with}
NOT_AN_INPUT = ("run.device", "data.workers", "ensemble.cache_dir")  # where or how fast, not what is learnt


def _checked(entry, schema: dict, where: str, rules: dict) -> dict:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping of keys, got {type(entry).__name__}", where)
    checked = config_mod.merge(schema, entry, strict=True, source=where)
    config_mod.check_values(checked, rules=rules, defaults=schema, prefix=f"{where}.")
    return checked


def override_settings(overrides, where: str) -> tuple[list[str], list[config_mod.Setting]]:
    """An entry's `overrides`: a list ["train.epochs=2"] (parsed as `--set` text) or a mapping
    {"train.epochs": 2} / {"train": {"epochs": 2}} (values as the YAML file typed them) ->
    (override texts, settings)."""
    if overrides is None:
        return [], []
    if isinstance(overrides, list):
        if not all(isinstance(o, str) and "=" in o for o in overrides):
            raise ConfigError(f"{where}: a list of overrides must hold 'key=value' strings", where)
        return list(overrides), []
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: overrides must be a mapping of keys to values or a list of key=value", where)

    def flat(tree: dict, prefix: str = ""):
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield config_mod.Setting(f"{prefix}{key}", value, where)

    return [], list(flat(overrides))


def load_experiment(source: str | Path | dict, *, out: str | Path | None = None, device: str | None = None) -> dict:
    """The experiment file (or an already-read mapping) checked against the schema, with
    defaults filled, `out` and `device` overridden when given and paths made absolute."""
    raw = config_mod.read_yaml(source) if not isinstance(source, dict) else source
    where = str(source) if not isinstance(source, dict) else "experiment"
    exp = config_mod.merge(SCHEMA, raw, strict=True, source=where)
    config_mod.check_values(exp, rules=RULES, defaults=SCHEMA, origins={k: where for k in raw})
    if exp["data"]["synth"] is not None:
        exp["data"]["synth"] = _checked(exp["data"]["synth"], SYNTH_SCHEMA, "data.synth", SYNTH_RULES)
    elif not exp["data"]["path"]:
        raise ConfigError(f"{where}: set data.path (a dataset) or data.synth (render one)", "data")
    if not exp["bases"]:
        raise ConfigError(f"{where}: list at least one base learner under `bases`", "bases")
    for i, b in enumerate(exp["bases"]):
        if isinstance(b, dict) and not b.get("name"):
            raise ConfigError(f"{where}: bases[{i}] needs a learner name", f"bases[{i}].name")
    exp["bases"] = [_checked(b, BASE_SCHEMA, f"bases[{i}]", BASE_RULES) for i, b in enumerate(exp["bases"])]
    exp["meta"] = [_checked(m, META_SCHEMA, f"meta[{i}]", META_RULES) for i, m in enumerate(exp["meta"] or [])]
    exp["out"] = str(Path(out or exp["out"] or Path("experiments") / exp["name"]).expanduser().resolve())
    if device:
        exp["device"] = device
    if exp["data"]["path"]:
        exp["data"]["path"] = str(Path(exp["data"]["path"]).expanduser().resolve())
    return exp


@dataclass
class Step:
    """One unit of the experiment. run(step, progress) trains/produces; status: new | resume |
    done | stale (trained again from the start). inputs() -> what a training step is made from
    (see `training_inputs`), computed when the step is reached (a meta step's bases are
    trained by then)."""
    label: str
    kind: str                                   # "data" | "base" | "meta" | "compare"
    run: Callable
    run_dir: Path | None = None
    status: str = "new"
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    inputs: Callable[[], dict] | None = None


def training_inputs(cfg: dict, data_cfg: dict, base_runs: dict[str, Path] | None = None) -> dict:
    """What a training step is made from: its resolved config (less NOT_AN_INPUT), the
    fingerprint of its dataset (`data_cfg`) and the sha256 of each base run's checkpoint."""
    import copy

    from ensemble_mde.data.dataset import data_fingerprint
    from ensemble_mde.io import file_sha256
    from ensemble_mde.runs import resolve_checkpoint

    config = copy.deepcopy(cfg)
    for key in NOT_AN_INPUT:
        config_mod.drop_key(config, key)
    from ensemble_mde.training.sets import member_runs, read_set

    def sha(run: Path) -> str:  # a set: all its members' checkpoints
        if read_set(run) is None:
            return file_sha256(resolve_checkpoint(run))
        return ",".join(file_sha256(resolve_checkpoint(m)) for m in member_runs(run))

    bases = {label: sha(Path(run)) for label, run in (base_runs or {}).items()}
    return {"config": config, "data": data_fingerprint(data_cfg), "bases": bases}


def _differences(old, new, prefix: str = "") -> list[str]:
    """'key old -> new' for each dotted key whose value differs between two configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str) for d in _differences(old.get(k), new.get(k),
                                                                                     f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix[:-1]} {old!r} -> {new!r}"]


def stale_reason(recorded: dict | None, current: dict) -> str | None:
    """Why a run made from the `recorded` inputs does not fit the `current` ones (None: it does)."""
    if recorded is None:
        return f"no record of the inputs it was trained with in {STEPS_FILE}"
    reasons = []
    changed = _differences(recorded.get("config"), current["config"])
    if changed:
        reasons.append("config " + "; ".join(changed[:3]) + (f" (and {len(changed) - 3} more)" if len(changed) > 3
                                                             else ""))
    if recorded.get("data") != current["data"]:
        reasons.append("the dataset changed (its list files or synthetic.json differ)")
    reasons += [f"base {label} was retrained" for label, sha in current["bases"].items()
                if recorded.get("bases", {}).get(label) != sha]
    return "; ".join(reasons) or None


def run_status(run_dir: Path) -> str:
    if (run_dir / "summary.json").is_file():
        return "done"
    return "resume" if (run_dir / "last.pt").is_file() else "new"


def set_status(folder: Path, spec) -> str:
    """done when every member of the set `spec` in `folder` is finished, resume when it has begun."""
    statuses = [run_status(folder / member) for member, _ in spec.members()]
    if all(st == "done" for st in statuses):
        return "done"
    return "resume" if folder.is_dir() else "new"


def set_spec(entry: dict, where: str):
    """The SetSpec of a base entry's `set:` mapping ({seeds: [...]} | {folds: K} | {holdout: F},
    partition_seed), or None."""
    from ensemble_mde.training.sets import SetSpec

    if entry["set"] is None:
        return None
    made = _checked(entry["set"], SET_SCHEMA, f"{where}.set", SET_RULES)
    kinds = [k for k in ("seeds", "folds", "holdout") if made[k] is not None]
    if len(kinds) != 1:
        raise ConfigError(f"{where}.set: give one of seeds, folds, holdout (got {', '.join(kinds) or 'none'})",
                          f"{where}.set")
    return SetSpec.of(kinds[0], made[kinds[0]], made["partition_seed"])


def data_path(exp: dict) -> Path:
    return Path(exp["out"]) / "data" if exp["data"]["synth"] is not None else Path(exp["data"]["path"])


def _synth_matches(root: Path, synth: dict) -> bool:
    """Whether `root` holds the data `synth` renders (a damaged marker: no, render it again)."""
    marker = root / "synthetic.json"
    try:
        made = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(made, dict) and (made.get("counts") == {k: synth[k] for k in ("train", "val", "test")}
            and list(made.get("size", [])) == list(synth["size"]) and made.get("seed") == synth["seed"])


def _run_name(entry: dict, default: str, seed: int) -> str:
    name = entry["run_name"] or default
    return f"{name}_s{seed}" if len(entry["seeds"]) > 1 else name


def plan(exp: dict, say=print) -> list[Step]:
    """The steps of the experiment with every run config resolved up front (a bad key fails
    before any training starts)."""
    from ensemble_mde.runs import run_name
    from ensemble_mde.training.base import base_config, train_base
    from ensemble_mde.training.meta import meta_config, train_meta
    from ensemble_mde.training.sets import train_base_set

    out = Path(exp["out"])
    runs_dir = out / "runs"
    data = data_path(exp)
    common = [config_mod.Setting("run.runs_dir", str(runs_dir), "experiment out"),
              config_mod.Setting("run.device", exp["device"], "experiment device")]
    steps = []

    synth = exp["data"]["synth"]
    if synth is not None:
        def make_data(step, progress):
            from ensemble_mde.data.synth import synthesize

            counts = {k: synth[k] for k in ("train", "val", "test")}
            synthesize(data, counts=counts, size=tuple(synth["size"]), seed=synth["seed"], progress=progress)

        steps.append(Step(f"synthesize {synth['train']}/{synth['val']}/{synth['test']} frames of "
                          f"{synth['size'][0]}x{synth['size'][1]}", "data", make_data,
                          status="done" if _synth_matches(data, synth) else "new"))
    elif not data.exists():
        raise ConfigError(f"dataset not found: set data.path in the experiment file to your copy ({data})",
                          "data.path")

    base_runs: dict[str, dict[int, Path]] = {}       # base label -> seed -> run folder
    base_data: dict[str, dict] = {}                  # base label -> the data section it trains on
    sets: dict = {}                                  # base label -> SetSpec, for the bases that are sets
    for i, entry in enumerate(exp["bases"]):
        label = entry["run_name"] or entry["name"]
        if label in base_runs:
            raise ConfigError(f"two bases are called {label!r}; give one a run_name", f"bases[{i}].run_name")
        spec = set_spec(entry, f"bases[{i}]")
        if spec is not None:
            overrides, settings = override_settings(entry["overrides"], f"bases[{i}].overrides")
            settings += common + [config_mod.Setting("data.path", str(data), "experiment data")]
            cfg = base_config(entry["name"], config_file=entry["config"], overrides=overrides, preset=entry["preset"],
                              settings=settings)
            run_dir = runs_dir / label
            base_runs[label] = {0: run_dir}
            sets[label] = spec

            def train_set(step, progress, entry=entry, spec=spec, overrides=overrides, settings=settings,
                          run_dir=run_dir):
                train_base_set(entry["name"], spec, run_dir, config_file=entry["config"], overrides=overrides,
                               preset=entry["preset"], settings=settings, resume=True, force=step.status == "stale",
                               progress=progress, say=lambda *a: None)

            def set_inputs(cfg=cfg, spec=spec):
                return training_inputs({**cfg, "set": spec.describe()}, cfg["data"])

            base_data[label] = cfg["data"]
            steps.append(Step(f"train set {label} ({spec.kind})", "base", train_set, run_dir,
                              set_status(run_dir, spec), inputs=set_inputs))
            continue
        for seed in entry["seeds"]:
            name = _run_name(entry, entry["name"], seed)
            overrides, settings = override_settings(entry["overrides"], f"bases[{i}].overrides")
            settings += common + [config_mod.Setting("data.path", str(data), "experiment data"),
                                  config_mod.Setting("run.name", name, f"bases[{i}]"),
                                  config_mod.Setting("run.seed", int(seed), f"bases[{i}].seeds")]
            cfg = base_config(entry["name"], config_file=entry["config"], overrides=overrides, preset=entry["preset"],
                              settings=settings)
            run_dir = runs_dir / name
            base_runs.setdefault(label, {})[seed] = run_dir

            def train(step, progress, cfg=cfg):
                _, summary = train_base(cfg, resume=step.status == "resume", force=step.status == "stale",
                                        progress=progress)
                step.info = summary

            base_data[label] = cfg["data"]
            steps.append(Step(f"train {name}", "base", train, run_dir, run_status(run_dir),
                              inputs=lambda cfg=cfg: training_inputs(cfg, cfg["data"])))

    for i, entry in enumerate(exp["meta"]):
        chosen = entry["bases"] or list(base_runs)
        members = {b: b.split("/", 1) for b in chosen if isinstance(b, str) and "/" in b}
        for b, (label, member) in members.items():   # label/member: one member run of a set
            if label not in sets or member not in [m for m, _ in sets[label].members()]:
                raise ConfigError(f"meta[{i}].bases: {b!r} names no member of a set of this experiment",
                                  f"meta[{i}].bases")
            base_runs[b] = {0: base_runs[label][0] / member}
            base_data[b] = base_data[label]
        unknown = [b for b in chosen if b not in base_runs]
        if unknown:
            raise ConfigError(f"meta[{i}].bases: {unknown[0]!r} is not a base of this experiment "
                              f"({', '.join(base_runs)})", f"meta[{i}].bases")
        if len(chosen) < 2 and not any(b in sets for b in chosen):   # a set alone is a SAME/CV ensemble
            raise ConfigError(f"meta[{i}] stacks {len(chosen)} base; a stacked ensemble needs at least 2 bases",
                              f"meta[{i}].bases")
        for seed in entry["seeds"]:
            overrides, settings = override_settings(entry["overrides"], f"meta[{i}].overrides")
            settings += common + [config_mod.Setting("run.seed", int(seed), f"meta[{i}].seeds"),
                                  config_mod.Setting("ensemble.stacking", entry["stacking"], f"meta[{i}].stacking"),
                                  config_mod.Setting("ensemble.oof_test", entry["oof_test"], f"meta[{i}].oof_test")]
            if entry["mode"] == "simultaneous":   # fresh bases train with the meta-learner from the start
                bases = [next(b["name"] for b in exp["bases"] if (b["run_name"] or b["name"]) == label)
                         for label in chosen]
                settings.append(config_mod.Setting("data.path", str(data), "experiment data"))
                trained = {}
            else:                                   # the trained bases of this seed (else their first seed)
                trained = {label: base_runs[label].get(seed, next(iter(base_runs[label].values())))
                           for label in chosen}
                bases = [str(run) for run in trained.values()]

            def meta_cfg(settings):
                return meta_config(inputs=entry["inputs"], mode=entry["mode"], bases=bases,
                                   config_file=entry["config"], overrides=overrides, preset=entry["preset"],
                                   settings=settings)

            name = _run_name(entry, run_name(meta_cfg(settings)), seed)
            cfg = meta_cfg([*settings, config_mod.Setting("run.name", name, f"meta[{i}]")])
            run_dir = runs_dir / name

            def train(step, progress, cfg=cfg):
                _, summary = train_meta(cfg, resume=step.status == "resume", force=step.status == "stale",
                                        progress=progress, say=lambda *a: None)
                step.info = summary

            def inputs(cfg=cfg, trained=trained, data_cfg=base_data[chosen[0]]):
                return training_inputs(cfg, data_cfg, trained)

            protocol = "" if entry["stacking"] == "in-sample" else f" {entry['stacking']}"
            steps.append(Step(f"train {name} (meta {entry['inputs']} {entry['mode']}{protocol})", "meta", train,
                              run_dir, run_status(run_dir), inputs=inputs))

    run_dirs = [s.run_dir for s in steps if s.run_dir is not None]

    def compare(step, progress):
        from ensemble_mde.compare import compare_runs, write_report

        c = exp["compare"]
        comparison = compare_runs(run_dirs, split=c["split"], flip=c["flip_tta"], baselines=c["baselines"],
                                  bootstrap=c["bootstrap"], bootstrap_seed=c["bootstrap_seed"],
                                  device=exp["device"], measure=c["measure"], repeats=c["repeats"],
                                  figure_images=c["figure_images"], progress=progress,
                                  uncertainty=c["uncertainty"], say=say)
        step.info = {"comparison": comparison,
                     "report": write_report(comparison, out / "report", silog=c["silog"],
                                            title=f"Experiment {exp['name']}")}

    steps.append(Step("compare and report", "compare", compare, out / "report"))
    return steps


def run_experiment(exp: dict, *, progress: bool = True, console=None) -> dict:
    """Run the plan: an overall progress bar of the steps, each step's own bars beneath it.
    Writes <out>/experiment.json (steps, status, seconds). Returns {"steps", "comparison",
    "report", "seconds"}. The experiment folder is locked meanwhile (`io.exclusive_lock`):
    a second run of it would render the data again under the first one's training and
    interleave its steps.json with the first one's."""
    from ensemble_mde.io import exclusive_lock
    from ensemble_mde.runs import LOCK_FILE

    out = Path(exp["out"])
    with exclusive_lock(out / LOCK_FILE, f"experiment folder {out}",
                        "wait for that experiment to finish, or choose another --out"):
        return _run_steps(exp, progress, console)


def _run_steps(exp: dict, progress: bool, console) -> dict:
    from rich.markup import escape

    from ensemble_mde.compare import print_tables
    from ensemble_mde.io import atomic_write_json, read_json
    from ensemble_mde.progress import output_console, task_progress

    console = console or output_console()
    out = Path(exp["out"])
    records_file = out / STEPS_FILE
    recorded = read_json(records_file) if records_file.is_file() else {}
    started = time.perf_counter()
    with task_progress(progress) as bar:
        steps = plan(exp, say=bar.console.print)
        total = bar.add_task(f"experiment {exp['name']}", total=len(steps))
        for n, step in enumerate(steps, 1):
            bar.update(total, description=f"[{n}/{len(steps)}] {step.label}")
            if step.inputs is not None:
                current = step.inputs()
                reason = stale_reason(recorded.get(step.label), current) if step.status != "new" else None
                if reason:
                    step.status = "stale"
                    bar.console.print(f"[yellow]stale[/] {escape(step.label)} ({step.run_dir}): {escape(reason)}; "
                                      "training it again from the start", soft_wrap=True)
                if step.status != "done":
                    recorded[step.label] = current
                    atomic_write_json(recorded, records_file)
            if step.status == "done":
                bar.console.print(f"[dim]skip[/] {step.label} (finished: {step.run_dir or data_path(exp)})")
            else:
                t = time.perf_counter()
                if step.status == "resume":
                    bar.console.print(f"resume {step.label} from {step.run_dir / 'last.pt'}")
                step.run(step, progress)
                step.seconds = time.perf_counter() - t
                bar.console.print(f"[green]done[/] {step.label} in {step.seconds:.0f} s")
            bar.advance(total)
        bar.update(total, description=f"experiment {exp['name']}: done")
    seconds = time.perf_counter() - started
    final = steps[-1].info
    print_tables(final["comparison"], "table", silog=exp["compare"]["silog"], console=console)
    console.print(f"report: {final['report']}   ({seconds:.0f} s in all)")
    atomic_write_json({"name": exp["name"], "seconds": round(seconds, 1),
                       "steps": [{"step": s.label, "kind": s.kind, "run": str(s.run_dir) if s.run_dir else None,
                                  "status": s.status, "seconds": round(s.seconds, 1)} for s in steps]},
                      out / "experiment.json")
    return {"steps": steps, "comparison": final["comparison"], "report": final["report"], "seconds": seconds}


def demo(out: str | Path = "demo", *, device: str | None = None, progress: bool = True) -> dict:
    """The packaged demo experiment (configs/experiments/demo.yaml) into `out`."""
    path = config_mod.packaged_config_path("experiments/demo")
    return run_experiment(load_experiment(path, out=out, device=device), progress=progress)
