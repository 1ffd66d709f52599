"""`ensemble train-base NAME` and `ensemble lr-find NAME`."""

from __future__ import annotations

import argparse

from ensemble_mde.cli import add_config_options


def add_training_options(p: argparse.ArgumentParser) -> None:
    add_config_options(p)
    p.add_argument("--preset", metavar="NAME", help="a preset of the learner's config, e.g. cpu (small, synthetic data)")
    p.add_argument("--out", metavar="RUN", help="run folder (default runs/<learner>)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--size", metavar="HxW", help="frame size the data is resized to (crops scale with it)")
    p.add_argument("--seed", type=int)
    p.add_argument("--selectivity", metavar="LAYERS", help="comma-separated layers for the depth-selectivity regulariser")
    p.add_argument("--alpha", type=float, help="weight of the selectivity term (default -0.1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_run_folder_options(p: argparse.ArgumentParser) -> None:
    """What to do with a run folder that already holds a run (by default: refuse)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    group.add_argument("--force", action="store_true", help="overwrite the run already in the run folder")


def register(sub) -> None:
    p = sub.add_parser("train-base", help="train a base learner (adabins, bts, ldrn, meter_xxs ...)",
                       description="Train a base learner; writes runs/<name>/ with config, checkpoints, metrics.")
    p.add_argument("name", help="learner name (see `ensemble profile --list`)")
    add_training_options(p)
    add_run_folder_options(p)
    p.set_defaults(func=cmd_train_base)

    p = sub.add_parser("lr-find", help="LR range test: suggests a learning rate and plots the curve",
                       description="Exponential learning-rate ramp; prints the suggested LR and saves a PNG plot.")
    p.add_argument("name", help="learner name")
    add_training_options(p)
    p.add_argument("--steps", type=int, help="ramp length (default lr_find.steps)")
    p.add_argument("--plot", metavar="PNG", help="where to save the plot (default <run folder>/lr_find.png)")
    p.set_defaults(func=cmd_lr_find)


def _config(args) -> tuple[dict, list[str]]:
    """(the resolved config, the `key=value` overrides the command line gave)."""
    from ensemble_mde.pipeline import base_config, cli_overrides

    overrides = cli_overrides(args)
    if getattr(args, "steps", None):
        overrides.append(f"lr_find.steps={args.steps}")
    return base_config(args.name, config_file=args.config, overrides=overrides, preset=args.preset), overrides


def note_ignored_on_resume(run_dir, overrides: list[str], say) -> None:
    """One line naming the overrides a --resume will not apply (the run keeps its saved config)."""
    from rich.markup import escape

    from ensemble_mde import runs

    ignored = runs.ignored_on_resume(run_dir, overrides)
    if ignored:
        say(escape(f"note: resuming {run_dir} with the config it started with; not applied: {', '.join(ignored)}"))


def cmd_train_base(args) -> int:
    from ensemble_mde import runs
    from ensemble_mde.pipeline import train_base
    from ensemble_mde.progress import output_console

    cfg, overrides = _config(args)
    console = output_console()
    if args.resume:
        note_ignored_on_resume(runs.run_dir_for(cfg, cfg["model"]["name"]), overrides, console.print)
    run_dir, summary = train_base(cfg, resume=args.resume, force=args.force, progress=not args.no_progress)
    last = summary["last_val"]
    console.print(f"[bold]{cfg['model']['name']}[/] -> {run_dir}  best {summary['best_metric']} "
                  f"{summary['best_value']:.4f} (epoch {summary['best_epoch']}); last val rmse "
                  f"{last['rmse']:.4f} abs_rel {last['abs_rel']:.4f} d1 {last['d1']:.4f}")
    return 0


def cmd_lr_find(args) -> int:
    from pathlib import Path

    from ensemble_mde import runs
    from ensemble_mde.lr_finder import find_lr_for_config

    cfg, _ = _config(args)
    plot = Path(args.plot) if args.plot else runs.run_dir_for(cfg, cfg["model"]["name"] + "_lr_find") / "lr_find.png"
    result = find_lr_for_config(cfg, plot_path=plot, progress=not args.no_progress)
    print(f"suggested learning rate: {result['suggestion']:.3g}  (steepest descent of the smoothed loss; "
          f"{len(result['lrs'])} steps{', stopped on divergence' if result['diverged'] else ''}); plot: {plot}")
    return 0
