"""`ensemble train-base NAME`: train a base learner into a run folder."""

from __future__ import annotations

from ensemble_mde.commands.options import (add_run_folder_options, add_training_options, flag_settings,
                                          note_ignored_on_resume)


def register(sub) -> None:
    p = sub.add_parser("train-base", help="train a base learner (adabins, bts, ldrn, meter_xxs ...)",
                       description="Train a base learner; writes runs/<name>/ with config, checkpoints, metrics.")
    p.add_argument("name", help="learner name (see `ensemble profile --list`)")
    add_training_options(p)
    add_run_folder_options(p)
    p.set_defaults(func=cmd_train_base)


def cmd_train_base(args) -> int:
    from ensemble_mde import runs
    from ensemble_mde.training.base import base_config, train_base
    from ensemble_mde.progress import output_console

    settings = flag_settings(args)
    cfg = base_config(args.name, config_file=args.config, overrides=args.overrides, preset=args.preset,
                      settings=settings)
    console = output_console()
    if args.resume:
        note_ignored_on_resume(runs.run_dir_for(cfg, cfg["model"]["name"]), args, settings, console.print)
    run_dir, summary = train_base(cfg, resume=args.resume, force=args.force, progress=not args.no_progress)
    last = summary["last_val"]
    console.print(f"[bold]{cfg['model']['name']}[/] -> {run_dir}  best {summary['best_metric']} "
                  f"{summary['best_value']:.4f} (epoch {summary['best_epoch']}); last val rmse "
                  f"{last['rmse']:.4f} abs_rel {last['abs_rel']:.4f} d1 {last['d1']:.4f}")
    return 0
