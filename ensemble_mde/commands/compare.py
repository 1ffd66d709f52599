"""`ensemble compare [RUN...]`: the paper's tables over runs."""

from __future__ import annotations

from ensemble_mde.commands.options import add_device_option, int_at_least

FORMATS = ("table", "md", "csv", "latex", "json")
TABLES = ("accuracy", "compute")


def register(sub) -> None:
    p = sub.add_parser("compare", help="the paper's tables: each base, the baselines, every stacking variant",
                       description="Evaluate each run once on the test split and print the accuracy table "
                                   "(bases, averaging baselines, stacking variants; runs differing only by seed "
                                   "as mean ± std; best bold, second underlined) and the compute table. "
                                   "--bootstrap adds paired-bootstrap CIs against the simple average; "
                                   "--uncertainty scores each ensemble's per-pixel uncertainty by sparsification "
                                   "(AUSE); --out writes every table format, figures and report.md.")
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="run folders (default: every finished or imported run in --runs-dir)")
    p.add_argument("--runs-dir", default="runs", metavar="DIR", help="where to look for runs (default runs)")
    p.add_argument("--data", metavar="PATH", help="dataset (default: the data the runs were trained on)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--flip-tta", action="store_true", help="average with the mirrored prediction")
    p.add_argument("--baselines", default="mean,median,weighted,oracle,convex", metavar="LIST",
                   help="baselines over the bases: mean,median,weighted and the upper bounds oracle (per-pixel "
                        "selection) and convex (per-pixel convex blend) (default all; 'none' for none)")
    p.add_argument("--bootstrap", type=int_at_least(0, "--bootstrap"), default=0, metavar="N",
                   help="paired bootstrap with N resamples: each variant minus the mean baseline (95%% CI, p)")
    p.add_argument("--bootstrap-seed", type=int, default=0, dest="bootstrap_seed")
    p.add_argument("--format", default="table", choices=FORMATS, help="what is printed (default table)")
    p.add_argument("--table", choices=TABLES, help="print only this table (csv prints one table per stream: "
                                                  "accuracy unless this says compute)")
    p.add_argument("--silog", action="store_true", help="add the SILog column")
    p.add_argument("--uncertainty", action="store_true",
                   help="score each ensemble's uncertainty (the spread of its base depths under its weights) by "
                        "sparsification: AUSE and AURG of RMSE and REL per variant, and with --out the curves "
                        "beside the oracle's (sparsification.png)")
    p.add_argument("--out", metavar="DIR", help="write all table formats, per-image metrics, figures and report.md")
    p.add_argument("--figure-images", type=int_at_least(0, "--figure-images"), default=3, dest="figure_images",
                   help="test images in the qualitative grid (with --out; default 3)")
    p.add_argument("--no-compute", action="store_true", help="skip GMACs and latency measurements")
    p.add_argument("--repeats", type=int_at_least(1, "--repeats"), default=10,
                   help="timed passes per model for latency (default 10)")
    add_device_option(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_compare)


def parse_baselines(text: str) -> list[str]:
    from ensemble_mde.compare import BASELINE_NAMES
    from ensemble_mde.errors import ConfigError

    if text.strip().lower() == "none":
        return []
    names = [t.strip() for t in text.split(",") if t.strip()]
    for name in names:
        if name not in BASELINE_NAMES:
            raise ConfigError(f"unknown baseline {name!r} in --baselines; choose from {', '.join(BASELINE_NAMES)}",
                              "--baselines")
    return names


def cmd_compare(args) -> int:
    from ensemble_mde.compare import compare_runs, print_tables
    from ensemble_mde.compare.variants import finished_runs
    from ensemble_mde.progress import output_console
    from ensemble_mde.compare import write_report

    console = output_console(stderr=args.format != "table")
    notes = output_console(stderr=True)
    paths = args.runs or finished_runs(args.runs_dir)
    comparison = compare_runs(paths, data=args.data, split=args.split, flip=args.flip_tta,
                              baselines=parse_baselines(args.baselines), bootstrap=args.bootstrap,
                              bootstrap_seed=args.bootstrap_seed, device=args.device or "auto",
                              measure=not args.no_compute, repeats=args.repeats,
                              figure_images=args.figure_images if args.out else 0,
                              progress=not args.no_progress, uncertainty=args.uncertainty,
                              say=lambda text: notes.print(text, markup=False, highlight=False))
    if args.format == "csv" and args.table is None:
        notes.print("CSV holds one table: this is accuracy; --table compute prints the compute table "
                    "(--out DIR writes both)", markup=False, highlight=False)
    print_tables(comparison, args.format, silog=args.silog, console=console, only=args.table)
    if args.out:
        report = write_report(comparison, args.out, silog=args.silog)
        console.print(f"wrote tables (txt md csv tex json), figures and {report}")
    return 0
