"""`ensemble evaluate RUN`, `ensemble predict RUN IMAGE...`, `ensemble profile NAME_OR_RUN`."""

from __future__ import annotations

import json
from pathlib import Path

from ensemble_mde.cli import add_config_options, parse_size


DEFAULT_PROFILE_SIZE = (416, 544)  # the SG study's training crop, for a learner with no size of its own


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="NYU metrics of a run on a split (Eigen crop for NYU-sized GT)",
                       description="Run the model at its configured input size, upsample to the GT resolution, "
                                   "score with the NYU protocol.")
    p.add_argument("run", help="run folder or checkpoint")
    add_config_options(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--flip-tta", action="store_true", help="average with the mirrored prediction")
    p.add_argument("--batch-size", type=int, default=4, dest="batch_size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="depth maps for images: 16-bit PNG (mm) + colourised PNG",
                       description="Predict depth for images of any size (turned upright as their EXIF "
                                   "orientation says, resized to the run's input size, the depth resized back). "
                                   "Outputs are named after each image's stem, with its extension and folders "
                                   "added where two images would share a name.")
    p.add_argument("run", help="run folder or checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", default="predictions", metavar="DIR")
    p.add_argument("--flip-tta", action="store_true")
    p.add_argument("--device", metavar="D")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("profile", help="params, GMACs, latency and FPS of a learner or run",
                       description="Size and speed of a model: params, mult-adds (torch.utils.flop_counter, "
                                   "flops/2), median latency after warm-up, FPS.")
    p.add_argument("target", nargs="?", help="learner name (e.g. adabins), run folder, or 'meta' (the weighting "
                                             "network alone)")
    p.add_argument("--list", action="store_true", help="print the learner names and exit")
    p.add_argument("--learners", type=int, default=3, help="meta: number of base learners K (default 3)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="learner name or meta: override a key of its packaged config, e.g. --set meta.inputs=rgb")
    p.add_argument("--size", metavar="HxW", help="input size (default: a run's own input size; a learner's "
                                                 "configured data.size, else 416x544)")
    p.add_argument("--batch-size", type=int, default=1, dest="batch_size")
    p.add_argument("--repeats", type=int, default=10, help="timed forward passes")
    p.add_argument("--device", metavar="D")
    p.add_argument("--compile", action="store_true", help="time the torch.compile'd model (compiles first: minutes on CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object: params gmacs latency_ms fps")
    p.set_defaults(func=cmd_profile)


def _eval_config(run_cfg: dict, args) -> dict:
    """A copy of the run's config with the user's data choice (a new --data re-detects the
    format); the run's own config keeps its data.size, the model's input size."""
    import copy

    from ensemble_mde import config as config_mod
    from ensemble_mde.pipeline import finalize_paths

    cfg = copy.deepcopy(run_cfg)
    if args.data:
        cfg = config_mod.merge(cfg, {"data": {"path": args.data, "format": "auto", "train_list": None,
                                              "test_list": None, "train_root": None, "test_root": None}}, strict=True, source="--data")
    for text in args.overrides:
        cfg = config_mod.merge(cfg, config_mod.parse_override(text), strict=True, source=f"--set {text}")
    cfg = finalize_paths(cfg)
    cfg["data"]["size"] = None  # score against GT at its own resolution
    return cfg


def cmd_evaluate(args) -> int:
    from ensemble_mde.data import build_dataset, eigen_crop_default
    from ensemble_mde.device import resolve_device
    from ensemble_mde.evaluation import evaluate_model, model_input_size
    from ensemble_mde.loading import load_any_run
    from ensemble_mde.metrics import METRIC_KEYS

    device = resolve_device(args.device or "auto")
    model, run_cfg = load_any_run(args.run, device=device, for_inference=True)
    cfg = _eval_config(run_cfg, args)
    dataset = build_dataset(cfg, args.split, augment=False)
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
                        f"{', Eigen crop' if eigen else ''}{', flip TTA' if args.flip_tta else ''})")
    for key in METRIC_KEYS:
        table.add_column(key, justify="right")
    table.add_row(*(f"{metrics[k]:.4f}" for k in METRIC_KEYS))
    output_console().print(table)
    return 0


def cmd_predict(args) -> int:
    import torch

    from ensemble_mde.device import resolve_device
    from ensemble_mde.data import load_rgb
    from ensemble_mde.evaluation import model_input_size, resize_rgb
    from ensemble_mde.io import distinct_stems
    from ensemble_mde.loading import load_any_run
    from ensemble_mde.metrics import flip_tta
    from ensemble_mde.visualize import save_colorized_depth, save_depth_png, save_weight_maps

    device = resolve_device(args.device or "auto")
    model, cfg = load_any_run(args.run, device=device, for_inference=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = model_input_size(cfg)
    for image, stem in zip(args.images, distinct_stems(args.images)):
        rgb = load_rgb(image, upright=True)  # [3,H,W] in [0,1]; grayscale/RGBA converted
        h, w = rgb.shape[-2:]
        in_size = size or (h, w)
        with torch.inference_mode():
            x = resize_rgb(rgb[None].to(device), in_size)
            outputs = model(x)
            depth = flip_tta(lambda t: model(t)["depth"], x) if args.flip_tta else outputs["depth"]
            depth = torch.nn.functional.interpolate(depth.float(), size=(h, w), mode="bilinear",
                                                    align_corners=False)[0, 0].cpu()
        save_depth_png(depth, out / f"{stem}_depth.png")
        save_colorized_depth(depth, out / f"{stem}_depth_color.png", max_depth=cfg["data"]["max_depth"],
                             title=f"{Path(image).name}: depth (m)")
        written = [f"{stem}_depth.png", f"{stem}_depth_color.png"]
        if "weights" in outputs:
            save_weight_maps(outputs["weights"][0].float().cpu(), getattr(model, "names", None),
                             out / f"{stem}_weights.png")
            written.append(f"{stem}_weights.png")
        note = ("; no weight map: the relaxed head predicts depth, not weights"
                if "base_depths" in outputs and "weights" not in outputs else "")
        print(f"{image}: depth {float(depth.min()):.2f}-{float(depth.max()):.2f} m "
              f"(median {float(depth.median()):.2f}) -> {', '.join(str(out / n) for n in written)}{note}")
    return 0


def cmd_profile(args) -> int:
    from ensemble_mde.errors import ConfigError

    if args.list:
        import base_learners

        print("\n".join(base_learners.available()))
        return 0
    if not args.target:
        raise ConfigError("name a learner, a run folder or 'meta' (learners: ensemble profile --list)", "target")
    from ensemble_mde.device import resolve_device
    from ensemble_mde.evaluation import model_input_size
    from ensemble_mde.loading import load_any_run, packaged_learner
    from ensemble_mde.profiling import profile_model

    device = resolve_device(args.device or "auto")
    if Path(args.target).exists():
        model, cfg = load_any_run(args.target, device=device)
    else:
        model, cfg = packaged_learner(args.target, num_learners=args.learners, overrides=args.overrides)
    size = parse_size(args.size) if args.size else model_input_size(cfg) or DEFAULT_PROFILE_SIZE
    result = profile_model(model, size, batch=args.batch_size, device=device, repeats=args.repeats,
                           compile=args.compile)
    if args.json:
        print(json.dumps({**{k: result[k] for k in ("params", "gmacs", "latency_ms", "fps")}, "input_size": list(size)}))
        return 0
    print(f"{args.target} at {size[0]}x{size[1]}, batch {args.batch_size} on {device}: "
          f"params {result['params']:,} ({result['params'] / 1e6:.2f}M)  GMACs {result['gmacs']:.3f}  "
          f"latency {result['latency_ms']:.1f} ms  FPS {result['fps']:.1f}")
    return 0
