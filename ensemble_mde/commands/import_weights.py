"""`ensemble import-weights NAME FILE --out RUN`: official pretrained weights as a run folder."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("import-weights", help="official pretrained weights (METER) -> a run folder",
                       description="Convert an official weights file into a run folder (config.yaml + best.pt) "
                                   "that evaluate, predict, compare and the meta-learner load like any run. "
                                   "METER: the output is converted to metres (NYU weights: from centimetres, "
                                   "KITTI weights: from decimetres, with the KITTI protocol: 80 m, Garg crop).")
    p.add_argument("name", help="learner: meter_xxs, meter_xs or meter_s")
    p.add_argument("file", help="official state_dict, e.g. build_model_best_nyu_xxs or build_model_best_kitti_xxs")
    p.add_argument("--dataset", metavar="NAME", help="the data the weights were trained on: nyu or kitti "
                                                     "(default: as the file's name says, else nyu)")
    p.add_argument("--out", metavar="RUN", help="run folder to write (default runs/<name>_official)")
    p.add_argument("--force", action="store_true", help="overwrite the run already in the run folder")
    p.set_defaults(func=cmd_import_weights)


def cmd_import_weights(args) -> int:
    from ensemble_mde.loading import load_run
    from ensemble_mde.weights import import_official_weights, official_release

    out = Path(args.out) if args.out else Path("runs") / f"{args.name}_official"
    dataset, release = official_release(args.name, Path(args.file), args.dataset)
    best = import_official_weights(args.name, Path(args.file), out, force=args.force, dataset=dataset)
    model, cfg, _ = load_run(best)  # the run folder rebuilds on its own
    params = sum(p.numel() for p in model.parameters())
    scaled = ", ".join(f"{key} x {factor:g}" for key, factor in release["to_metres"].items())
    h, w = release["input_size"]
    print(f"{args.name} ({dataset}): {params:,} parameters from {args.file}; to metres: {scaled}; "
          f"input {h}x{w}, depth up to {cfg['model']['max_depth']:g} m; wrote {out / 'config.yaml'} and {best}")
    return 0
