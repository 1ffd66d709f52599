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
    meta:                      # one run per variant and seed, over the bases of the same seed
      - {inputs: rgb+d, mode: freeze, bases: null, preset: null, overrides: {}, seeds: [0]}
    compare: {split: test, baselines: [mean, median, weighted, oracle], bootstrap: 1000}

Steps run through the Python API (ensemble_mde.pipeline, meta_learner.training). A run with
summary.json is finished and skipped; one with last.pt is resumed; any other is trained.
Relative paths are relative to the current directory. `overrides` is a mapping of dotted
keys (or nested sections) to values, or a list of "key=value" strings.
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
    "compare": {"split": "test", "baselines": ["mean", "median", "weighted", "oracle"], "bootstrap": 1000,
                "bootstrap_seed": 0, "flip_tta": False, "figure_images": 3, "measure": True, "repeats": 10,
                "silog": False},
}
SYNTH_SCHEMA = {"train": 2000, "val": 200, "test": 200, "size": [240, 320], "seed": 0}
BASE_SCHEMA = {"name": None, "run_name": None, "preset": None, "config": None, "overrides": None, "seeds": [0]}
META_SCHEMA = {"inputs": "rgb+d", "mode": "freeze", "bases": None, "run_name": None, "preset": None,
               "config": None, "overrides": None, "seeds": [0]}


def _checked(entry, schema: dict, where: str) -> dict:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping of keys, got {type(entry).__name__}", where)
    return config_mod.merge(schema, entry, strict=True, source=where)


def override_list(overrides, where: str) -> list[str]:
    """A mapping {"train.epochs": 2} / {"train": {"epochs": 2}} or a list ["train.epochs=2"]
    -> ["train.epochs=2"] (values written as JSON, which YAML reads back with their types)."""
    if overrides is None:
        return []
    if isinstance(overrides, list):
        if not all(isinstance(o, str) and "=" in o for o in overrides):
            raise ConfigError(f"{where}: a list of overrides must hold 'key=value' strings", where)
        return list(overrides)
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: overrides must be a mapping of keys to values or a list of key=value", where)
    out = []
    for key, value in overrides.items():
        if isinstance(value, dict) and value:
            out += [f"{key}.{item}" for item in override_list(value, where)]
        else:
            out.append(f"{key}={json.dumps(value)}")
    return out


def load_experiment(source: str | Path | dict, *, out: str | Path | None = None, device: str | None = None) -> dict:
    """The experiment file (or an already-read mapping) checked against the schema, with
    defaults filled, `out` and `device` overridden when given and paths made absolute."""
    raw = config_mod.read_yaml(source) if not isinstance(source, dict) else source
    where = str(source) if not isinstance(source, dict) else "experiment"
    exp = config_mod.merge(SCHEMA, raw, strict=True, source=where)
    if exp["data"]["synth"] is not None:
        exp["data"]["synth"] = _checked(exp["data"]["synth"], SYNTH_SCHEMA, "data.synth")
    elif not exp["data"]["path"]:
        raise ConfigError(f"{where}: set data.path (a dataset) or data.synth (render one)", "data")
    if not exp["bases"]:
        raise ConfigError(f"{where}: list at least one base learner under `bases`", "bases")
    exp["bases"] = [_checked(b, BASE_SCHEMA, f"bases[{i}]") for i, b in enumerate(exp["bases"])]
    exp["meta"] = [_checked(m, META_SCHEMA, f"meta[{i}]") for i, m in enumerate(exp["meta"] or [])]
    for i, b in enumerate(exp["bases"]):
        if not b["name"]:
            raise ConfigError(f"{where}: bases[{i}] needs a learner name", f"bases[{i}].name")
    exp["out"] = str(Path(out or exp["out"] or Path("experiments") / exp["name"]).expanduser().resolve())
    if device:
        exp["device"] = device
    if exp["data"]["path"]:
        exp["data"]["path"] = str(Path(exp["data"]["path"]).expanduser().resolve())
    return exp


@dataclass
class Step:
    """One unit of the experiment. run(step, progress) trains/produces; status: new | resume | done."""
    label: str
    kind: str                                   # "data" | "base" | "meta" | "compare"
    run: Callable
    run_dir: Path | None = None
    status: str = "new"
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


def run_status(run_dir: Path) -> str:
    if (run_dir / "summary.json").is_file():
        return "done"
    return "resume" if (run_dir / "last.pt").is_file() else "new"


def data_path(exp: dict) -> Path:
    return Path(exp["out"]) / "data" if exp["data"]["synth"] is not None else Path(exp["data"]["path"])


def _synth_matches(root: Path, synth: dict) -> bool:
    marker = root / "synthetic.json"
    if not marker.is_file():
        return False
    made = json.loads(marker.read_text())
    return (made.get("counts") == {k: synth[k] for k in ("train", "val", "test")}
            and list(made.get("size", [])) == list(synth["size"]) and made.get("seed") == synth["seed"])


def _run_name(entry: dict, default: str, seed: int) -> str:
    name = entry["run_name"] or default
    return f"{name}_s{seed}" if len(entry["seeds"]) > 1 else name


def plan(exp: dict, say=print) -> list[Step]:
    """The steps of the experiment with every run config resolved up front (a bad key fails
    before any training starts)."""
    from ensemble_mde.pipeline import base_config, train_base
    from meta_learner.training import meta_config, train_meta

    out = Path(exp["out"])
    runs_dir = out / "runs"
    data = data_path(exp)
    common = [f"run.runs_dir={json.dumps(str(runs_dir))}", f"run.device={json.dumps(exp['device'])}"]
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
    for i, entry in enumerate(exp["bases"]):
        label = entry["run_name"] or entry["name"]
        if label in base_runs:
            raise ConfigError(f"two bases are called {label!r}; give one a run_name", f"bases[{i}].run_name")
        for seed in entry["seeds"]:
            name = _run_name(entry, entry["name"], seed)
            overrides = override_list(entry["overrides"], f"bases[{i}].overrides") + common + [
                f"data.path={json.dumps(str(data))}", f"run.name={json.dumps(name)}", f"run.seed={int(seed)}"]
            cfg = base_config(entry["name"], config_file=entry["config"], overrides=overrides, preset=entry["preset"])
            run_dir = runs_dir / name
            base_runs.setdefault(label, {})[seed] = run_dir

            def train(step, progress, cfg=cfg):
                _, summary = train_base(cfg, resume=step.status == "resume", progress=progress)
                step.info = summary

            steps.append(Step(f"train {name}", "base", train, run_dir, run_status(run_dir)))

    for i, entry in enumerate(exp["meta"]):
        chosen = entry["bases"] or list(base_runs)
        unknown = [b for b in chosen if b not in base_runs]
        if unknown:
            raise ConfigError(f"meta[{i}].bases: {unknown[0]!r} is not a base of this experiment "
                              f"({', '.join(base_runs)})", f"meta[{i}].bases")
        if len(chosen) < 2:
            raise ConfigError(f"meta[{i}] stacks {len(chosen)} base; a stacked ensemble needs at least 2 bases",
                              f"meta[{i}].bases")
        default = f"meta_{entry['inputs'].replace('+', '')}_{entry['mode']}"
        for seed in entry["seeds"]:
            name = _run_name(entry, default, seed)
            overrides = override_list(entry["overrides"], f"meta[{i}].overrides") + common + [
                f"run.name={json.dumps(name)}", f"run.seed={int(seed)}"]
            if entry["mode"] == "simultaneous":   # fresh bases train with the meta-learner from the start
                bases = [next(b["name"] for b in exp["bases"] if (b["run_name"] or b["name"]) == label)
                         for label in chosen]
                overrides.append(f"data.path={json.dumps(str(data))}")
            else:                                   # the trained bases of this seed (else their first seed)
                bases = [str(base_runs[label].get(seed, next(iter(base_runs[label].values())))) for label in chosen]
            cfg = meta_config(inputs=entry["inputs"], mode=entry["mode"], bases=bases, config_file=entry["config"],
                              overrides=overrides, preset=entry["preset"])
            run_dir = runs_dir / name

            def train(step, progress, cfg=cfg):
                _, summary = train_meta(cfg, resume=step.status == "resume", progress=progress,
                                        say=lambda *a: None)
                step.info = summary

            steps.append(Step(f"train {name} (meta {entry['inputs']} {entry['mode']})", "meta", train, run_dir,
                              run_status(run_dir)))

    run_dirs = [s.run_dir for s in steps if s.run_dir is not None]

    def compare(step, progress):
        from ensemble_mde.compare import compare_runs
        from ensemble_mde.report import write_report

        c = exp["compare"]
        comparison = compare_runs(run_dirs, split=c["split"], flip=c["flip_tta"], baselines=c["baselines"],
                                  bootstrap=c["bootstrap"], bootstrap_seed=c["bootstrap_seed"],
                                  device=exp["device"], measure=c["measure"], repeats=c["repeats"],
                                  figure_images=c["figure_images"], progress=progress, say=say)
        step.info = {"comparison": comparison,
                     "report": write_report(comparison, out / "report", silog=c["silog"],
                                            title=f"Experiment {exp['name']}")}

    steps.append(Step("compare and report", "compare", compare, out / "report"))
    return steps


def run_experiment(exp: dict, *, progress: bool = True, console=None) -> dict:
    """Run the plan: an overall progress bar of the steps, each step's own bars beneath it.
    Writes <out>/experiment.json (steps, status, seconds). Returns {"steps", "comparison",
    "report", "seconds"}."""
    from ensemble_mde.commands.compare import print_tables
    from ensemble_mde.io import atomic_write_json
    from ensemble_mde.progress import output_console, task_progress

    console = console or output_console()
    out = Path(exp["out"])
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with task_progress(progress) as bar:
        steps = plan(exp, say=bar.console.print)
        total = bar.add_task(f"experiment {exp['name']}", total=len(steps))
        for n, step in enumerate(steps, 1):
            bar.update(total, description=f"[{n}/{len(steps)}] {step.label}")
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
