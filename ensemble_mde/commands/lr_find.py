"""`ensemble lr-find NAME`: the learning-rate range test of a base learner."""

from __future__ import annotations

from ensemble_mde.commands.options import add_training_options, flag_settings


def register(sub) -> None:
    p = sub.add_parser("lr-find", help="LR range test: suggests a learning rate and plots the curve",
                       description="Exponential learning-rate ramp; prints the suggested LR and saves a PNG plot.")
    p.add_argument("name", help="learner name")
    add_training_options(p)
    p.add_argument("--steps", type=int, help="ramp length (default lr_find.steps)")
    p.add_argument("--plot", metavar="PNG", help="where to save the plot (default <run folder>/lr_find.png)")
    p.set_defaults(func=cmd_lr_find)


def cmd_lr_find(args) -> int:
    from pathlib import Path

    from ensemble_mde import runs
    from ensemble_mde.training.lr_finder import find_lr_for_config
    from ensemble_mde.training.base import base_config

    cfg = base_config(args.name, config_file=args.config, overrides=args.overrides, preset=args.preset,
                      settings=flag_settings(args))
    plot = Path(args.plot) if args.plot else runs.run_dir_for(cfg, cfg["model"]["name"] + "_lr_find") / "lr_find.png"
    result = find_lr_for_config(cfg, plot_path=plot, progress=not args.no_progress)
    print(f"suggested learning rate: {result['suggestion']:.3g}  (steepest descent of the smoothed loss; "
          f"{len(result['lrs'])} steps{', stopped on divergence' if result['diverged'] else ''}); plot: {plot}")
    return 0
