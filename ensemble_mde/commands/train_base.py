"""`ensemble train-base NAME`: train a base learner into a run folder, or a set of them
(`--seeds`, `--folds`, `--holdout`: ensemble_mde.training.sets)."""

from __future__ import annotations

from ensemble_mde.commands.options import (add_run_folder_options, add_training_options, flag_settings,
                                          note_ignored_on_resume)


def register(sub) -> None:
    p = sub.add_parser("train-base", help="train a base learner (adabins, bts, ldrn, meter_xxs ...), or a set of them",
                       description="Train a base learner; writes runs/<name>/ with config, checkpoints, metrics. "
                                   "With --seeds, --folds or --holdout, a set: a folder of member runs and set.json.")
    p.add_argument("name", help="learner name (see `ensemble profile --list`)")
    made = p.add_mutually_exclusive_group()
    made.add_argument("--seeds", metavar="S,S,...", help="a set of one run per seed (members seed<S>)")
    made.add_argument("--folds", type=int, metavar="K", help="a set of K fold runs, fold k's scenes held out "
                                                            "(members fold<k>), and `full` on all scenes")
    made.add_argument("--holdout", type=float, metavar="F", help="a run with a fraction F of the training scenes "
                                                                "held out (member `holdout`), for --stacking holdout")
    p.add_argument("--partition-seed", type=int, default=0, dest="partition_seed",
                   help="seed of the scene partition of --folds/--holdout (default 0)")
    add_training_options(p)
    add_run_folder_options(p)
    p.set_defaults(func=cmd_train_base)


def set_spec(args):
    """The SetSpec the flags ask for, or None for a single run."""
    from ensemble_mde.errors import ConfigError
    from ensemble_mde.training.sets import SetSpec

    if args.seeds is not None:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds takes comma-separated integers, got {args.seeds!r}", "--seeds") from None
        return SetSpec.of("seeds", seeds)
    for kind in ("folds", "holdout"):
        if getattr(args, kind) is not None:
            return SetSpec.of(kind, getattr(args, kind), args.partition_seed)
    return None


def cmd_train_base(args) -> int:
    from ensemble_mde import runs
    from ensemble_mde.data.protocol import protocol_layer
    from ensemble_mde.training.base import base_config, train_base
    from ensemble_mde.progress import output_console

    settings = flag_settings(args)
    console = output_console()
    spec = set_spec(args)
    if spec is not None:
        from ensemble_mde.training.sets import train_base_set

        out = [s for s in settings if s.key not in ("run.name", "run.runs_dir")]
        folder = train_base_set(args.name, spec, args.out, config_file=args.config, overrides=args.overrides,
                                preset=args.preset, settings=out, resume=args.resume, force=args.force,
                                progress=not args.no_progress, say=console.print)
        console.print(f"[bold]{args.name} set ({spec.kind})[/] -> {folder}")
        return 0
    cfg = base_config(args.name, config_file=args.config, overrides=args.overrides, preset=args.preset,
                      settings=settings)
    layer = protocol_layer(cfg["data"])
    if layer:
        console.print(f"the data's protocol layer ({layer}) applies: depth up to {cfg['data']['max_depth']:g} m; "
                      "--preset, --config and --set win over it")
    if args.resume:
        note_ignored_on_resume(runs.run_dir_for(cfg, cfg["model"]["name"]), args, settings, console.print)
    run_dir, summary = train_base(cfg, resume=args.resume, force=args.force, progress=not args.no_progress)
    last = summary["last_val"]
    console.print(f"[bold]{cfg['model']['name']}[/] -> {run_dir}  best {summary['best_metric']} "
                  f"{summary['best_value']:.4f} (epoch {summary['best_epoch']}); last val rmse "
                  f"{last['rmse']:.4f} abs_rel {last['abs_rel']:.4f} d1 {last['d1']:.4f}")
    return 0
