"""Command-line values enter the config as the types they are: paths stay strings whatever
they hold (spaces, #, :, =, unicode), run names stay strings however number-like or
yes/no/null-like; only --set KEY=VALUE is parsed as YAML."""

import argparse
import shutil

import pytest
import yaml

from ensemble_mde.cli import main
from ensemble_mde.commands.options import add_training_options, flag_settings
from ensemble_mde.config import Setting, load_config
from ensemble_mde.errors import ConfigError

FAST = ["--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-progress", "--set", "data.workers=0",
        "--set", "train.max_steps_per_epoch=1"]


def train(capsys, *args) -> None:
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    assert done.value.code == 0, capsys.readouterr().err


def test_the_acceptance_line_bts_on_a_folder_with_a_hash_into_a_number_like_run(synth_root, tmp_path, capsys,
                                                                                monkeypatch):
    data = shutil.copytree(synth_root, tmp_path / "DIR WITH #2")
    monkeypatch.chdir(tmp_path)
    train(capsys, "train-base", "bts", "--preset", "cpu", "--data", data, "--out", "runs/0123", *FAST)
    saved = yaml.safe_load((tmp_path / "runs" / "0123" / "config.yaml").read_text())
    assert saved["run"]["name"] == "0123" and saved["run"]["runs_dir"] == "runs"
    assert saved["data"]["path"] == str(data)


@pytest.mark.parametrize("folder", ["with space", "hash #2", "colon: a", "equals a=b", "unicode Łódź ü"])
def test_data_paths_keep_every_character(synth_root, tmp_path, capsys, folder):
    data = shutil.copytree(synth_root, tmp_path / folder)
    out = tmp_path / "runs" / "run"
    train(capsys, "train-base", "meter_xxs", "--preset", "cpu", "--data", data, "--out", out, *FAST)
    assert yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))["data"]["path"] == str(data)


@pytest.mark.parametrize("name", ["0123", "1e3", "0x10", "yes", "no", "null", "true", "~", "3.0"])
def test_run_names_stay_strings(name, tmp_path):
    parser = argparse.ArgumentParser()
    add_training_options(parser)
    args = parser.parse_args(["--out", str(tmp_path / name), "--data", str(tmp_path / "a #b"), "--size", "48x64",
                              "--selectivity", "enc_1, dec_0", "--epochs", "2"])
    settings = {s.key: s.value for s in flag_settings(args)}
    assert settings["run.name"] == name and settings["data.path"] == str(tmp_path / "a #b")
    assert settings["data.size"] == [48, 64] and settings["selectivity.layers"] == ["enc_1", "dec_0"]
    assert settings["train.epochs"] == 2
    cfg = load_config(["defaults", "base/meter_xxs"], settings=flag_settings(args))
    assert cfg["run"]["name"] == name and isinstance(cfg["run"]["name"], str)


def test_set_is_still_yaml_and_a_typed_value_is_still_checked():
    assert load_config(["defaults"], overrides=["train.epochs=3", "augment.flip=0.25"])["train"]["epochs"] == 3
    # --set reads YAML, so `yes` is a bool and the rules refuse it where a string belongs; --out is the way
    with pytest.raises(ConfigError, match="--set run.name=yes: run.name must be a string or null, got True"):
        load_config(["defaults"], overrides=["run.name=yes"])

    with pytest.raises(ConfigError, match="--epochs: .*train.epochs must be an int >= 1, got 0"):
        load_config(["defaults"], settings=[Setting("train.epochs", 0, "--epochs")])
    with pytest.raises(ConfigError, match="--epochs and --set train.epochs=2 both set train.epochs"):
        load_config(["defaults"], overrides=["train.epochs=2"], settings=[Setting("train.epochs", 3, "--epochs")])


def test_a_run_name_that_leaves_runs_dir_is_one_line_and_out_dotdot_names_that_folder(synth_root, tmp_path,
                                                                                     capsys, monkeypatch):
    work = tmp_path / "project" / "sub"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for name in ("..", "a/../..", "."):
        with pytest.raises(SystemExit) as done:
            main(["train-base", "meter_xxs", "--data", str(synth_root), "--set", "run.runs_dir=runs",
                  "--set", f"run.name={name}", *FAST])
        err = capsys.readouterr().err.strip()
        assert done.value.code == 2 and err == (f"error: run.name {name!r} must name a folder inside run.runs_dir, "
                                                "like 'adabins_lr3e-4'")
    assert not (tmp_path / "project" / "config.yaml").exists() and not (work / "config.yaml").exists()

    train(capsys, "train-base", "meter_xxs", "--data", synth_root, "--out", "..", "--size", "48x64", *FAST)
    saved = yaml.safe_load((tmp_path / "project" / "config.yaml").read_text())
    assert saved["run"]["name"] == "project" and saved["run"]["runs_dir"] == str(tmp_path)
