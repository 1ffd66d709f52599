"""`ensemble experiment FILE.yaml` and `ensemble demo`: a whole study from one file."""

from __future__ import annotations

from ensemble_mde.commands.options import add_device_option


def register(sub) -> None:
    p = sub.add_parser("experiment", help="run a whole study from one YAML: data, bases, meta variants, compare",
                       description="Trains every base learner and meta variant the file lists through the Python "
                                   "API (finished runs are skipped, interrupted ones resumed), then compares "
                                   "them and writes report.md.")
    p.add_argument("file", help="experiment YAML (see configs/experiments/demo.yaml)")
    p.add_argument("--out", metavar="DIR", help="experiment folder (default: the file's `out`)")
    add_device_option(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("demo", help="the whole pipeline on synthetic data in minutes on a CPU",
                       description="Runs the packaged demo experiment: synthetic rooms -> adabins, bts, ldrn, "
                                   "meter_xxs -> meta-learners (rgb, d, rgb+d freeze; rgb+d finetune) -> "
                                   "compare with bootstrap -> report.md.")
    p.add_argument("--out", default="demo", metavar="DIR", help="where everything goes (default demo/)")
    add_device_option(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)


def cmd_experiment(args) -> int:
    from ensemble_mde.experiment import load_experiment, run_experiment

    experiment = load_experiment(args.file, out=args.out, device=args.device)
    run_experiment(experiment, progress=not args.no_progress)
    return 0


def cmd_demo(args) -> int:
    from ensemble_mde.experiment import demo

    demo(args.out, device=args.device, progress=not args.no_progress)
    return 0
