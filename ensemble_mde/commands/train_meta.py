"""`ensemble train-meta`: the stacked-generalization meta-learner over base learners."""

from __future__ import annotations

from ensemble_mde.commands.options import (add_run_folder_options, add_training_options, flag_settings,
                                          note_ignored_on_resume)


def register(sub) -> None:
    p = sub.add_parser("train-meta", help="train the meta-learner that weights the base learners per pixel",
                       description="Stacked generalization: the SG study's weighting network looks at the image "
                                   "and/or the base depths and outputs per-pixel weights; the ensemble depth is the "
                                   "weighted sum (--set meta.head=relaxed: the network's own depth). Variants: "
                                   "--set meta.encoder=mobilenetv2_100|densenet161|<timm name>, "
                                   "--set ensemble.base_inputs=cached|live (freeze mode).")
    p.add_argument("--inputs", choices=["rgb", "d", "rgb+d"], help="what the meta-learner sees (default rgb+d)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--freeze", dest="mode", action="store_const", const="freeze",
                      help="bases fixed; their predictions cached once (default)")
    mode.add_argument("--finetune", dest="mode", action="store_const", const="finetune",
                      help="bases start from their checkpoints and train at a lower learning rate")
    mode.add_argument("--simultaneous", dest="mode", action="store_const", const="simultaneous",
                      help="bases and meta-learner train together from the start")
    p.add_argument("--bases", metavar="RUN,RUN,...",
                   help="base run folders (simultaneous: also learner names); default: newest adabins, bts, ldrn runs")
    p.add_argument("--stacking", choices=["in-sample", "holdout", "oof"],
                   help="what the meta-learner trains on: the bases' own training frames (in-sample, the study's, "
                        "default), held-out scenes (holdout: --holdout sets) or out-of-fold maps (oof: --folds sets)")
    p.add_argument("--oof-test", choices=["full", "folds"], dest="oof_test",
                   help="oof: each learner at test time is its full model (default) or the mean of its fold models")
    p.add_argument("--base-lr-factor", type=float, dest="base_lr_factor", help="finetune: base lr = lr x this")
    add_training_options(p)
    add_run_folder_options(p)
    p.set_defaults(func=cmd_train_meta)


def cmd_train_meta(args) -> int:
    from ensemble_mde import runs
    from ensemble_mde.progress import output_console
    from ensemble_mde.runs import run_name
    from ensemble_mde.training.meta import meta_config, train_meta

    settings = flag_settings(args)
    bases = [b.strip() for b in args.bases.split(",") if b.strip()] if args.bases else None
    cfg = meta_config(inputs=args.inputs, mode=args.mode, bases=bases, config_file=args.config,
                      overrides=args.overrides, preset=args.preset, settings=settings)
    console = output_console()
    if args.resume:
        note_ignored_on_resume(runs.run_dir_for(cfg, run_name(cfg)), args, settings, console.print)
    run_dir, summary = train_meta(cfg, resume=args.resume, force=args.force, progress=not args.no_progress,
                                  say=console.print)
    last = summary["last_val"]
    console.print(f"[bold]meta {cfg['meta']['inputs']} {cfg['ensemble']['mode']}[/] -> {run_dir}  best "
                  f"{summary['best_metric']} {summary['best_value']:.4f}; last val rmse {last['rmse']:.4f} "
                  f"abs_rel {last['abs_rel']:.4f} d1 {last['d1']:.4f}")
    return 0
