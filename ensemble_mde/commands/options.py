"""The flags several commands share, declared once, and what they set in the config.

A flag's value enters the config as the type it is (`config.Setting`): `--out runs/0123` is
the run folder `0123` (a string, not the YAML integer 83), `--data "/data/nyu #2"` the path
with its `#`. Only `--set KEY=VALUE` is parsed as YAML.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ensemble_mde.config import Setting, parse_size
from ensemble_mde.errors import ConfigError


def int_at_least(minimum: int, flag: str):
    """An argparse type: an integer of at least `minimum`, else a ConfigError naming `flag` (the
    CLI prints it as one line, as it does parse_size's)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ConfigError(f"must be at least {minimum}, got {value}", flag)
        return value

    parse.__name__ = "int"  # argparse's own message for text that is no integer: "invalid int value"
    return parse


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", metavar="D", help="auto (default), cpu, cuda, cuda:N")


def add_set_option(p: argparse.ArgumentParser, help_text: str | None = None) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=help_text or "override one config key, e.g. --set train.lr=1e-4 (repeatable)")


def add_config_options(p: argparse.ArgumentParser) -> None:
    """--config, --set, --data, --device: what every config-driven command takes."""
    p.add_argument("--config", metavar="FILE", help="YAML file merged over the packaged defaults")
    add_set_option(p)
    p.add_argument("--data", metavar="PATH", help="dataset root, list file or .mat/.zip (format detected)")
    add_device_option(p)


def add_training_options(p: argparse.ArgumentParser) -> None:
    """The config options, then the shortcut flags of the training commands."""
    add_config_options(p)
    p.add_argument("--preset", metavar="NAME", help="a preset of the learner's config, e.g. cpu (small, synthetic data)")
    p.add_argument("--out", metavar="RUN", help="run folder (default runs/<learner>)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--size", metavar="HxW", type=parse_size, help="frame size the data is resized to (crops scale "
                                                                   "with it)")
    p.add_argument("--seed", type=int)
    p.add_argument("--selectivity", metavar="LAYERS", help="comma-separated layers for the depth-selectivity regulariser")
    p.add_argument("--alpha", type=float, help="weight of the selectivity term (default -0.1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_run_folder_options(p: argparse.ArgumentParser) -> None:
    """What to do with a run folder that already holds a run (by default: refuse)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    group.add_argument("--force", action="store_true", help="overwrite the run already in the run folder")


# flag attribute -> the config key it sets (values taken as they are)
PLAIN_FLAGS = (("data", "data.path"), ("epochs", "train.epochs"), ("batch_size", "train.batch_size"),
               ("lr", "train.lr"), ("seed", "run.seed"), ("device", "run.device"), ("alpha", "selectivity.alpha"),
               ("base_lr_factor", "ensemble.base_lr_factor"), ("stacking", "ensemble.stacking"),
               ("oof_test", "ensemble.oof_test"), ("steps", "lr_find.steps"))


def flag_settings(args: argparse.Namespace) -> list[Setting]:
    """The config values the command line's flags give, each of its own type."""
    settings = [Setting(key, getattr(args, attr), "--" + attr.replace("_", "-"))
                for attr, key in PLAIN_FLAGS if getattr(args, attr, None) is not None]
    if getattr(args, "size", None):
        settings.append(Setting("data.size", list(args.size), "--size"))
    if getattr(args, "out", None):
        out = Path(args.out)
        if out.name in ("", ".", ".."):           # `--out .` / `--out ..`: that folder itself, by its name
            out = Path(os.path.abspath(out))
        settings += [Setting("run.runs_dir", out.parent.as_posix() or ".", "--out"),
                     Setting("run.name", out.name, "--out")]
    if getattr(args, "selectivity", None):
        layers = [name.strip() for name in args.selectivity.split(",") if name.strip()]
        settings.append(Setting("selectivity.layers", layers, "--selectivity"))
    return settings


def note_ignored_on_resume(run_dir, args: argparse.Namespace, settings: list[Setting], say) -> None:
    """One line naming the overrides a --resume will not apply (the run keeps its saved config)."""
    from rich.markup import escape

    from ensemble_mde import runs

    ignored = runs.ignored_on_resume(run_dir, args.overrides, settings)
    if ignored:
        say(escape(f"note: resuming {run_dir} with the config it started with; not applied: {', '.join(ignored)}"))
