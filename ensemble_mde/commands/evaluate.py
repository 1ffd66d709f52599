"""`ensemble evaluate RUN`: NYU metrics of a run on a split."""

from __future__ import annotations

import json
import sys

from ensemble_mde.commands.options import add_config_options, int_at_least


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="NYU metrics of a run on a split (Eigen crop for NYU-sized GT, "
                                        "Garg crop on KITTI)",
                       description="Run the model at its configured input size, upsample to the GT resolution, "
                                   "score with the NYU protocol.")
    p.add_argument("run", help="run folder or checkpoint")
    add_config_options(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--flip-tta", action="store_true", help="average with the mirrored prediction")
    p.add_argument("--batch-size", type=int_at_least(1, "--batch-size"), default=4, dest="batch_size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from ensemble_mde.data import build_dataset, eigen_crop_default
    from ensemble_mde.device import resolve_device
    from ensemble_mde.evaluation import evaluate_model, evaluation_config
    from ensemble_mde.runs import model_input_size
    from ensemble_mde.loading import load_any_run
    from ensemble_mde.metrics import METRIC_KEYS, crop_label

    device = resolve_device(args.device or "auto")
    model, run_cfg = load_any_run(args.run, device=device, for_inference=True)
    cfg = evaluation_config(run_cfg, data=args.data, overrides=args.overrides)
    dataset = build_dataset(cfg, args.split, augment=False)
    output_range = run_cfg["model"].get("max_depth")
    if output_range is not None and output_range < cfg["data"]["max_depth"]:
        print(f"note: {args.run} predicts up to {output_range:g} m; this data is scored up to "
              f"{cfg['data']['max_depth']:g} m", file=sys.stderr)
    eigen = eigen_crop_default(cfg["data"], dataset)
    acc = evaluate_model(model, dataset, device=device, input_size=model_input_size(run_cfg),
                         batch_size=args.batch_size, flip=args.flip_tta, eigen_crop=eigen,
                         min_depth=cfg["data"]["min_depth"], max_depth=cfg["data"]["max_depth"])
    metrics = acc.compute()
    if args.json:
        print(json.dumps({k: metrics[k] for k in (*METRIC_KEYS, "n_images")}))
        return 0
    from rich.table import Table

    from ensemble_mde.progress import output_console

    table = Table(title=f"{args.run} on {cfg['data']['path']} ({args.split}, {metrics['n_images']} images"
                        f"{', ' + crop_label(eigen) if eigen else ''}{', flip TTA' if args.flip_tta else ''})")
    for key in METRIC_KEYS:
        table.add_column(key, justify="right")
    table.add_row(*(f"{metrics[k]:.4f}" for k in METRIC_KEYS))
    output_console().print(table)
    return 0
