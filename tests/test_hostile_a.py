"""Hostile configuration values (issue 24, group A), each refused up front with one `error:`
line and exit code 2, before any run folder is made: what the packaged rules and the YAML
reader let through at a5cdcd5 (a traceback, or a silent wrong value)."""

import pytest
import torch
import yaml

from ensemble_mde.device import resolve_device
from ensemble_mde.errors import ConfigError
from test_hostile_input import error_line, refused

ONE_STEP = ["--epochs", "1", "--size", "32x48"]  # where today's code trains instead of refusing: briefly


def write_experiment(path, data, **changes):
    """An experiment file of one meter_xxs base trained for one step, with `changes` on top."""
    base = {"name": "meter_xxs", "overrides": {"data.workers": 0, "data.size": [32, 48], "train": {
        "epochs": 1, "batch_size": 4, "max_steps_per_epoch": 1}}}
    exp = {"name": "hostile", "device": "cpu", "data": {"path": str(data)}, "bases": [base],
           "compare": {"measure": False}}
    for key, value in changes.items():
        exp[key] = value(exp) if callable(value) else value
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


def experiment_refused(capsys, tmp_path, path) -> str:
    """The error line of `ensemble experiment` that must fail before training anything."""
    out = tmp_path / "exp_out"
    line = error_line(capsys, "experiment", path, "--out", out, "--no-progress")
    assert not (out / "runs").exists()
    return line


def test_a_key_given_twice_is_refused_not_silently_the_last(capsys, tmp_path, synth_root):
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  epochs: 1\naugment:\n  flip: 0.0\ntrain:\n  lr: 0.1\n")
    assert refused(capsys, tmp_path, synth_root, "--config", twice, *ONE_STEP) == (
        f"error: {twice}: key 'train' given twice (lines 1 and 5); keep one")
    assert refused(capsys, tmp_path, synth_root, "--set", "data.size={a: 1, a: 2}") == (
        "error: --set data.size={a: 1, a: 2}: key 'a' given twice; keep one")
    exp = write_experiment(tmp_path / "exp.yaml", synth_root)
    exp.write_text(exp.read_text() + "bases: []\n")
    lines = exp.read_text().splitlines()
    first, second = (n for n, text in enumerate(lines, 1) if text.startswith("bases:"))
    assert experiment_refused(capsys, tmp_path, exp) == (
        f"error: {exp}: key 'bases' given twice (lines {first} and {second}); keep one")


def test_a_value_that_contains_itself_is_refused_wherever_yaml_is_read(capsys, tmp_path, synth_root):
    exp = tmp_path / "loop.yaml"
    exp.write_text(f"data: {{path: {synth_root}}}\nbases:\n  - {{name: meter_xxs, overrides: &o {{train: *o}}}}\n")
    assert experiment_refused(capsys, tmp_path, exp) == (
        f"error: {exp}: bases[0].overrides contains itself through a YAML alias (&anchor ... *anchor); write the "
        "value out")
    assert refused(capsys, tmp_path, synth_root, "--set", "selectivity.layers=&a [*a]", *ONE_STEP) == (
        "error: --set selectivity.layers=&a [*a]: selectivity.layers contains itself through a YAML alias "
        "(&anchor ... *anchor); write the value out")


def test_nesting_too_deep_to_read_is_one_line(capsys, tmp_path, synth_root):
    deep = tmp_path / "deep.yaml"
    deep.write_text("train: " + "[" * 5000 + "]" * 5000 + "\n")
    assert refused(capsys, tmp_path, synth_root, "--config", deep) == f"error: {deep}: nested too deeply to be a config"


@pytest.mark.parametrize("override, message", [
    ("selectivity.layers=[1]", "selectivity.layers must be a list of strings, got [1]"),
    ("selectivity.layers=[[enc_1]]", "selectivity.layers must be a list of strings, got [['enc_1']]"),
    ("augment.gamma=[1, a]", "augment.gamma must be a list of 2 numbers > 0 in ascending order, got [1, 'a']"),
])
def test_list_elements_of_the_wrong_type_are_refused(capsys, tmp_path, synth_root, override, message):
    assert refused(capsys, tmp_path, synth_root, "--set", override, *ONE_STEP) == f"error: --set {override}: {message}"


@pytest.mark.parametrize("flag", [["--seed", "4294967296"], ["--set", "run.seed=99999999999999999999"]])
def test_a_seed_outside_numpys_range_is_refused(capsys, tmp_path, synth_root, flag):
    # numpy would have drawn seed 2**32 as seed 0, and torch cannot take 1e20 at all
    source = flag[0] if flag[0] == "--seed" else " ".join(flag)
    assert refused(capsys, tmp_path, synth_root, *flag, *ONE_STEP) == (
        f"error: {source}: run.seed must be an int in [0, 4294967295], got {flag[1].split('=')[-1]}")


def test_lr_find_steps_go_through_the_config_checks(capsys, tmp_path, synth_root):
    plot = tmp_path / "lr.png"
    lr_find = ["lr-find", "meter_xxs", "--data", synth_root, "--device", "cpu", "--no-progress", "--set",
               "data.workers=0", "--batch-size", "4", "--size", "32x48", "--plot", plot]
    assert error_line(capsys, *lr_find, "--steps", "0") == "error: --steps: lr_find.steps must be an int >= 2, got 0"
    assert error_line(capsys, *lr_find, "--steps", "3", "--set", "lr_find.steps=4") == (
        "error: --steps and --set lr_find.steps=4 both set lr_find.steps; give one of them")
    assert not plot.exists()


@pytest.mark.parametrize("compare, message", [
    ({"split": "banana"}, "compare.split must be one of train, val, test, got 'banana'"),
    ({"baselines": ["mean", "banana"]}, "compare.baselines must be a list drawn from mean, median, weighted, oracle, "
                                        "convex, got ['mean', 'banana']"),
    ({"bootstrap_seed": -1}, "compare.bootstrap_seed must be an int >= 0, got -1"),
])
def test_an_experiments_compare_values_are_checked_before_training(capsys, tmp_path, synth_root, compare, message):
    path = write_experiment(tmp_path / "exp.yaml", synth_root, compare={"measure": False, **compare})
    assert experiment_refused(capsys, tmp_path, path) == f"error: {message}"


@pytest.mark.parametrize("entry, message", [
    ({"set": {"folds": "three"}}, "bases[0].set.folds must be an int >= 2 or null, got 'three'"),
    ({"set": {"seeds": ["a"]}}, "bases[0].set.seeds must be a list of ints >= 0 or null, got ['a']"),
    ({"set": {"holdout": 1.5}}, "bases[0].set.holdout must be a number in (0, 1) or null, got 1.5"),
])
def test_an_experiments_set_values_are_checked(capsys, tmp_path, synth_root, entry, message):
    path = write_experiment(tmp_path / "exp.yaml", synth_root, bases=lambda exp: [{**exp["bases"][0], **entry}])
    assert experiment_refused(capsys, tmp_path, path) == f"error: {message}"


def test_an_experiments_meta_bases_are_names(capsys, tmp_path, synth_root):
    path = write_experiment(tmp_path / "exp.yaml", synth_root, meta=[{"bases": [["meter_xxs"], "bts"]}])
    assert experiment_refused(capsys, tmp_path, path) == (
        "error: meta[0].bases must be a list of strings or null, got [['meter_xxs'], 'bts']")


def test_the_experiment_rules_name_the_splits_and_baselines_of_the_code():
    from ensemble_mde.compare import BASELINE_NAMES
    from ensemble_mde.data.splits import SPLITS
    from ensemble_mde.experiment import RULES

    assert tuple(RULES["compare"]["split"]["choices"]) == SPLITS
    assert tuple(RULES["compare"]["baselines"]["choices"]) == BASELINE_NAMES


def test_a_device_the_toolkit_does_not_run_on_is_one_line(capsys, tmp_path, synth_root, monkeypatch):
    out = tmp_path / "run"
    line = error_line(capsys, "train-base", "meter_xxs", "--data", synth_root, "--out", out, "--no-progress",
                      "--device", "mps", *ONE_STEP)
    assert line == "error: unknown device 'mps' (use auto, cpu, cuda or cuda:N)" and not out.exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"no CUDA device 5: this machine has 2 \(cuda:0 \.\. cuda:1\)"):
        resolve_device("cuda:5")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
