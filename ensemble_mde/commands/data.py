"""`ensemble data check PATH`, `ensemble data show PATH --out F.png`, `ensemble data synth --out DIR`."""

from __future__ import annotations

import json

from ensemble_mde.commands.options import add_set_option
from ensemble_mde.config import parse_size


def register(sub) -> None:
    data = sub.add_parser("data", help="check, preview or synthesise a dataset",
                          description="Inspect a dataset (DenseDepth folder/zip, BTS or KITTI lists, labeled .mat) "
                                      "or render the synthetic one.")
    data.set_defaults(func=lambda args: _help(data))
    cmds = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    p = cmds.add_parser("check", help="format, splits, resolution, depth range and holes; reports bad files",
                        description="Checks that every listed file exists and reads an evenly spaced sample "
                                    "of each split. Exits with 2 when a file is missing or bad.")
    p.add_argument("path", help="dataset root, list file or .mat/.zip")
    _config_options(p)
    p.add_argument("--sample", type=int, default=200, help="frames read per split for the statistics")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_check)

    p = cmds.add_parser("show", help="save a grid of RGB / colourised depth samples",
                        description="Evenly spaced samples of a split: RGB above depth (invalid depth black).")
    p.add_argument("path", help="dataset root, list file or .mat/.zip")
    p.add_argument("--out", required=True, metavar="FILE", help="image to write, e.g. samples.png")
    p.add_argument("--n", type=int, default=8, help="number of samples")
    p.add_argument("--split", choices=["train", "val", "test"], help="default: train if present, else test")
    p.add_argument("--augment", action="store_true", help="show the training augmentation")
    _config_options(p)
    p.set_defaults(func=cmd_show)

    p = cmds.add_parser("synth", help="render the synthetic indoor dataset (DenseDepth layout, 16-bit mm)",
                        description="Procedural rooms with exact metric depth, written as data/nyu2_*.csv "
                                    "with a train/val/test split and a synthetic.json marker.")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--train", type=int, default=2000, help="training frames")
    p.add_argument("--val", type=int, default=200, help="validation frames")
    p.add_argument("--test", type=int, default=200, help="test frames")
    p.add_argument("--size", default=(240, 320), type=parse_size, metavar="HxW", help="frame size (default 240x320)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)


def _help(parser) -> int:
    parser.print_help()
    return 2


def _config_options(p) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML file merged over the packaged defaults")
    add_set_option(p, "override a config key, e.g. --set data.format=bts (repeatable)")


def _config(args) -> dict:
    """The data and augment sections as training would resolve them for PATH (its format's
    protocol layer included); the model section of a learner's --config is not used here."""
    from ensemble_mde.config import Setting
    from ensemble_mde.data.protocol import load_config_for_data

    return load_config_for_data(["defaults"], args.config, args.overrides,
                                settings=[Setting("data.path", args.path, "PATH")], unused_sections=("model",))


def cmd_check(args) -> int:
    from ensemble_mde.data.dataset import plural
    from ensemble_mde.data.inspect import check_dataset, format_report
    from ensemble_mde.errors import DataError

    report = check_dataset(_config(args), sample=args.sample)
    print(json.dumps(report) if args.json else format_report(report))
    if report["errors"]:
        more = report["error_count"] - 1
        raise DataError(report["errors"][0] + (f" (and {plural(more, 'more problem')})" if more else ""))
    return 0


def cmd_show(args) -> int:
    from ensemble_mde.data.inspect import show_samples

    out = show_samples(_config(args), args.out, n=args.n, split=args.split, augment=args.augment)
    print(f"wrote {out}")
    return 0


def cmd_synth(args) -> int:
    from ensemble_mde.data.synth import synthesize

    height, width = args.size
    synthesize(args.out, counts={"train": args.train, "val": args.val, "test": args.test},
               size=(height, width), seed=args.seed, progress=True)
    print(f"wrote {args.train}/{args.val}/{args.test} train/val/test frames of {height}x{width} to {args.out}")
    return 0
