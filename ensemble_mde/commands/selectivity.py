"""`ensemble selectivity RUN`: neuron depth selectivity per layer (You et al., ICCV 2021)."""

from __future__ import annotations

import json
from pathlib import Path

from ensemble_mde.commands.options import add_device_option, add_set_option

ABLATION_FRACTIONS = (0, 1 / 16, 1 / 8, 1 / 4, 1 / 2)  # default k = fraction x units of the layer


def register(sub) -> None:
    p = sub.add_parser("selectivity", help="neuron depth selectivity per layer (You et al. 2021)",
                       description="Dissect a run over a whole split: each unit's mean response per depth bin, "
                                   "its selectivity for its strongest bin, summarised per layer. Optional "
                                   "histograms and the ablation curve (zero the most selective units vs random).")
    p.add_argument("run", help="run folder or checkpoint")
    p.add_argument("--data", metavar="PATH", help="dataset root, list file or .mat/.zip (format detected)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--layers", default="all", metavar="all|A,B", help="layers of selectable_layers() (default all)")
    p.add_argument("--plot", action="store_true", help="write a PNG of per-unit selectivity histograms per layer")
    p.add_argument("--ablate", action="store_true", help="RMSE after zeroing the top-k selective vs k random units")
    p.add_argument("--ablate-layer", metavar="LAYER", help="layer to ablate (default: highest mean selectivity)")
    p.add_argument("--ablate-k", metavar="K,K,...",
                   help="numbers of units to zero (default 0, K/16, K/8, K/4, K/2 of the layer's K units)")
    p.add_argument("--random-repeats", type=int, default=3, help="random unit draws averaged per k (default 3)")
    p.add_argument("--batch-size", type=int, default=4, dest="batch_size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", metavar="DIR", help="where files go (default <run>/selectivity/)")
    add_device_option(p)
    add_set_option(p, "override a key of the run's config, e.g. --set data.format=bts (repeatable)")
    p.set_defaults(func=cmd_selectivity)


def _run_folder(run: str) -> Path:
    path = Path(run)
    return path if path.is_dir() else path.parent


def _layer_names(model, text: str) -> list[str]:
    from ensemble_mde.selectivity import resolve_layers, selectable_layers

    if text.strip() == "all":
        return list(selectable_layers(model))
    names = [n.strip() for n in text.split(",") if n.strip()]
    return list(resolve_layers(model, names))  # unknown names: one line naming the closest


def _ablation_ks(text: str | None, units: int) -> list[int]:
    from ensemble_mde.errors import ConfigError

    if text is None:
        return sorted({int(units * f) for f in ABLATION_FRACTIONS})
    try:
        ks = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ConfigError(f"--ablate-k {text!r} must be comma-separated integers", "--ablate-k") from None
    if not ks or ks[0] < 0 or ks[-1] > units:
        raise ConfigError(f"--ablate-k {text!r}: each k must lie in 0..{units} (units of the layer)", "--ablate-k")
    return ks


def cmd_selectivity(args) -> int:
    import torch

    from ensemble_mde.data import build_dataset, eigen_crop_default
    from ensemble_mde.device import resolve_device
    from ensemble_mde.evaluation import evaluation_config
    from ensemble_mde.runs import model_input_size
    from ensemble_mde.io import atomic_write_json
    from ensemble_mde.loading import load_any_run
    from ensemble_mde.progress import task_progress
    from ensemble_mde.selectivity import (ablation_curve, dissect_dataset, layer_statistics,
                                          save_ablation_plot, save_selectivity_histograms)

    device = resolve_device(args.device or "auto")
    model, run_cfg = load_any_run(args.run, device=device)
    layers = _layer_names(model, args.layers)
    if args.ablate_layer and args.ablate_layer not in layers:
        layers += _layer_names(model, args.ablate_layer)
    cfg = evaluation_config(run_cfg, data=args.data, overrides=args.overrides)
    dataset = build_dataset(cfg, args.split, augment=False)
    input_size = model_input_size(run_cfg)

    with task_progress(enabled=not args.json) as bar:
        task = bar.add_task(f"dissect {args.split}", total=len(dataset))
        dissection = dissect_dataset(model, dataset, layers, device=device, input_size=input_size,
                                     batch_size=args.batch_size, progress=lambda n: bar.advance(task, n))
    rows = layer_statistics(dissection)
    per_unit = dissection.result()
    result = {"run": str(args.run), "data": cfg["data"]["path"], "split": args.split, "n_images": len(dataset),
              "input_size": list(input_size) if input_size else None, "layers": rows,
              "average": sum(r["mean"] for r in rows) / len(rows)}

    out = Path(args.out) if args.out else _run_folder(args.run) / "selectivity"
    files = []
    if args.plot:
        path = out / "selectivity_histograms.png"
        save_selectivity_histograms(per_unit, path, title=f"{args.run}: {args.split}, {len(dataset)} images")
        files.append(path)
    if args.ablate:
        layer = args.ablate_layer or max(rows, key=lambda r: r["mean"])["layer"]
        order = torch.argsort(per_unit[layer], descending=True, stable=True)
        ks = _ablation_ks(args.ablate_k, len(order))
        with task_progress(enabled=not args.json) as bar:
            task = bar.add_task(f"ablate {layer}", total=None)
            curve = ablation_curve(model, dataset, layer, order, ks, random_repeats=args.random_repeats,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total),
                                   device=device, input_size=input_size, batch_size=args.batch_size,
                                   eigen_crop=eigen_crop_default(cfg["data"], dataset),
                                   min_depth=cfg["data"]["min_depth"], max_depth=cfg["data"]["max_depth"])
        curve["random_repeats"] = args.random_repeats
        result["ablation"] = curve
        atomic_write_json(curve, out / "ablation.json")
        save_ablation_plot(curve, out / "ablation.png", title=f"{args.run} ({args.split})")
        files += [out / "ablation.json", out / "ablation.png"]
    if files or args.out:
        path = out / "selectivity.json"
        atomic_write_json({**result, "units": {name: s.tolist() for name, s in per_unit.items()},
                           "preferred_bin": {n: b.tolist() for n, b in dissection.preferred_bins().items()}}, path)
        files.insert(0, path)
    result["files"] = [str(f) for f in files]

    if args.json:
        print(json.dumps(result))
        return 0
    _print_table(result)
    return 0


def _print_table(result: dict) -> None:
    from rich.table import Table

    from ensemble_mde.progress import output_console

    size = result["input_size"]
    table = Table(title=f"depth selectivity of {result['run']} on {result['data']} ({result['split']}, "
                        f"{result['n_images']} images{f', input {size[0]}x{size[1]}' if size else ''})")
    for name in ("layer", "units", "bins seen", "mean", "std", "median", "s > 0.5"):
        table.add_column(name, justify="left" if name == "layer" else "right")
    for r in result["layers"]:
        table.add_row(r["layer"], str(r["units"]), f"{r['bins_seen']}/{r['bins']}", f"{r['mean']:.4f}",
                      f"{r['std']:.4f}", f"{r['median']:.4f}", f"{r['frac_above']:.1%}")
    table.add_section()
    table.add_row("average", "", "", f"{result['average']:.4f}", "", "", "")
    console = output_console()
    console.print(table)
    if "ablation" in result:
        curve = result["ablation"]
        pairs = "  ".join(f"k={k}: {t:.4f} / {r:.4f}" for k, t, r in
                          zip(curve["k"], curve["top_rmse"], curve["random_rmse"]))
        console.print(f"ablation of {curve['layer']}, RMSE (m) most selective / random zeroed: {pairs}")
    for path in result["files"]:
        console.print(f"wrote {path}")
