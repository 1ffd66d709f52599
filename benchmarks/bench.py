"""The benchmark suite (docs/design.md §9): one table, one JSON, every figure measured in this run.

For each base learner, the weighting network alone, the simple average of the bases and the
stacked ensemble (rgb+d), at each size: params, GMACs, latency at batch 1, throughput at
batch 8, training images/s, peak memory, achieved GFLOP/s as a fraction of this machine's
own fp32 matmul GFLOP/s (bf16 measured too; both at the start and after the models, the
higher of the two taken as the peak). Then the ratios the project promises:
ensemble latency over simple-average latency, freeze-mode meta epoch with the prediction
cache over without (benchmarks/bench_cache.py), loader images/s over training-step images/s
at the demo's size with the default workers, and the synthetic renderer's frames/s
(benchmarks/bench_synth.py). Weights are freshly initialised: speed does not depend on them.

    python benchmarks/bench.py                      # the full suite, 5-6 min on 2 CPU cores
    python benchmarks/bench.py --sizes 192x256 --skip-train --out /tmp/quick.json
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import bench_cache
import bench_synth
from ensemble_mde.config import parse_size
from ensemble_mde.config import load_config
from ensemble_mde.data import build_dataset, loader_workers
from ensemble_mde.data.synth import synthesize
from ensemble_mde.device import resolve_device
from ensemble_mde.profiling import (count_gmacs, count_params, cpu_model, matmul_gflops, measure_latency,
                                    peak_memory_mb, training_images_per_s)
from ensemble_mde.speed import compile_for_inference, keep_freed_memory, prepare_for_inference
from ensemble_mde.loading import build_learner
from meta_learner.baselines import BaselineOverBases, MeanEnsemble
from meta_learner.ensemble import StackedEnsemble
from meta_learner.weighting import WeightingOnRgb, build_weighting

DEMO_LEARNER = "bts"  # the loader is measured against this learner's training step
PAIRED = ("average", "ensemble")  # batch-1 latency measured together, as pairs of passes


def build_models(learners: list[str], meta_overrides: list[str]) -> dict[str, tuple[torch.nn.Module, int]]:
    """name -> (model taking rgb, K base maps its training step reads from the cache or 0);
    `meta_overrides`: `--set` lines for the meta-learner's config."""
    cfgs = {name: load_config(["defaults", f"base/{name}"]) for name in learners}
    bases = [build_learner(cfgs[name], init_weights=False).eval() for name in learners]
    meta_cfg = load_config(["defaults", "meta/weighting"], overrides=meta_overrides)
    meta = build_weighting(meta_cfg, len(bases), init_weights=False)
    ensemble = StackedEnsemble(bases, meta, learners, mode="freeze").eval()
    models = {name: (base, 0) for name, base in zip(learners, bases)}
    models["meta"] = (WeightingOnRgb(meta, meta_cfg["data"]["max_depth"]), 0)
    models["average"] = (BaselineOverBases(ensemble.bases, learners, MeanEnsemble()), 0)
    models["ensemble"] = (ensemble, len(bases))
    return models


def model_row(name: str, plain: tuple[torch.nn.Module, int], fast: torch.nn.Module, size: tuple[int, int],
              device: torch.device, args) -> dict:
    """Every per-model figure at one size: cost from the plain model as trained, inference
    timed on the fast path (`fast`, or `plain` itself with --plain), training on the plain one."""
    model, cache_maps = plain
    row = {"model": name, "size": f"{size[0]}x{size[1]}", "params": count_params(model),
           "gmacs": round(count_gmacs(model, size), 3)}
    if name not in PAIRED:   # those two: from the alternating passes of their ratio (main)
        set_latency(row, measure_latency(fast, size, 1, device, warmup=1, repeats=args.repeats)["latency_ms"])
    row["throughput_b8"] = round(measure_latency(fast, size, 8, device, warmup=1, repeats=args.repeats_b8)["fps"], 2)
    row["peak_mb_b1"] = peak_in_fresh_process(name, size, device, args)
    if not args.skip_train and name not in ("meta", "average"):
        # meta: trained inside the freeze-mode ensemble (the `ensemble` row, cached base maps);
        # average: nothing to train.
        trained = copy.deepcopy(model)  # training changes the weights the inference rows share
        if not cache_maps:
            trained.requires_grad_(True)  # a base row: its module is frozen inside the freeze-mode ensemble
        row["train_img_s"] = round(training_images_per_s(trained, size, args.train_batch, device,
                                                         steps=args.train_steps, base_depths=cache_maps), 2)
    return row


def set_latency(row: dict, latency_ms: float) -> None:
    """A row's batch-1 latency and the GFLOP/s it achieves (2 flops per mult-add)."""
    row["latency_ms"] = round(latency_ms, 1)
    row["gflops"] = round(2 * row["gmacs"] / (latency_ms / 1e3), 2)


def matmul_rates(device: torch.device) -> dict[str, float]:
    """The machine's dense-matmul GFLOP/s now: {"fp32": ..., "bf16": ...}."""
    return {name: round(matmul_gflops(dtype, device=device), 1)
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}


def paired_latency(model: torch.nn.Module, reference: torch.nn.Module, size: tuple[int, int],
                   device: torch.device, repeats: int) -> dict:
    """Batch-1 latency of `model` against `reference` over `repeats` pairs of back-to-back
    passes (which of the two goes first alternates), so that drift on a shared machine hits
    both sides of each ratio alike: {"ratio": median of the per-pair ratios, "ratio_ci95":
    its bootstrap 95% interval, "model_ms", "reference_ms": each side's median, "pairs",
    and every pass's time (ms) in pass order, "model_ms_each", "reference_ms_each"}."""
    def one_pass(m: torch.nn.Module, warmup: int = 0) -> float:
        return measure_latency(m, size, 1, device, warmup=warmup, repeats=1)["latency_ms"]

    model_ms, reference_ms = [], []
    sides = [(model, model_ms), (reference, reference_ms)]
    for m, _ in sides:
        one_pass(m, warmup=1)
    for i in range(repeats):
        for m, times in (sides if i % 2 == 0 else sides[::-1]):
            times.append(one_pass(m))
    ratios = [m / r for m, r in zip(model_ms, reference_ms)]
    return {"ratio": round(statistics.median(ratios), 3), "ratio_ci95": median_ci95(ratios),
            "model_ms": statistics.median(model_ms), "reference_ms": statistics.median(reference_ms),
            "pairs": repeats, "model_ms_each": [round(t, 1) for t in model_ms],
            "reference_ms_each": [round(t, 1) for t in reference_ms]}


def median_ci95(values: list[float], resamples: int = 2000) -> list[float]:
    """Percentile-bootstrap 95% interval of the median of `values` (fixed seed)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return [round(medians[int(0.025 * resamples)], 3), round(medians[int(0.975 * resamples) - 1], 3)]


def peak_in_fresh_process(name: str, size: tuple[int, int], device: torch.device, args) -> float:
    """Peak memory (MB) one batch-1 inference adds, measured in a new process (`--peak-of`):
    in this one, memory freed by earlier measurements would be reused and hide the peak."""
    cmd = [sys.executable, __file__, "--peak-of", name, "--sizes", f"{size[0]}x{size[1]}", "--learners",
           args.learners, "--device", str(device), *set_args(args.meta_overrides)] + (["--plain"] if args.plain else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def cache_in_fresh_process(bench_args: list[str]) -> dict:
    """bench_cache.py's JSON result, run as its own process as a meta training run is: in
    this one, the heap the model measurements grew (never trimmed, see speed.py) and the
    modules they loaded would sit under both of its epochs."""
    cmd = [sys.executable, str(Path(bench_cache.__file__)), *bench_args]
    line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    print(line, flush=True)
    return json.loads(line)


def set_args(overrides: list[str]) -> list[str]:
    """The `--set KEY=VALUE` arguments that hand `overrides` to a child script."""
    return [arg for text in overrides for arg in ("--set", text)]


def print_peak_of(name: str, learners: list[str], size: tuple[int, int], device: torch.device, args) -> None:
    model = build_models(learners, args.meta_overrides)[name][0].to(device)
    if not args.plain:
        prepare_for_inference(model)
    x = torch.rand(1, 3, *size, device=device)
    with torch.inference_mode():
        print(round(peak_memory_mb(lambda: model(x), device), 1))


def loader_vs_step(device: torch.device, frames: int = 160) -> dict:
    """Loader images/s (default workers, demo frames 96x128 resized to the cpu preset's size,
    augmentation on) over the demo learner's training-step images/s on those batches."""
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        # one val frame: the set then has its own val split and every rendered frame trains
        synthesize(Path(tmp), counts={"train": frames, "val": 1}, size=(96, 128), seed=0, progress=False)
        cfg = load_config(["defaults", f"base/{DEMO_LEARNER}"], preset="cpu", overrides=[f"data.path={tmp}"])
        train_set = build_dataset(cfg, "train")
        train_set.set_epoch(0)
        batch_size, workers = int(cfg["train"]["batch_size"]), loader_workers(cfg["data"], device.type)
        loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True,
                                             num_workers=workers, pin_memory=device.type == "cuda")
        start, counted = None, 0
        for index, batch in enumerate(loader):
            if index == 0:
                start = time.perf_counter()  # workers started and warm
            else:
                counted += batch["rgb"].shape[0]
        loader_s = time.perf_counter() - start
        size = tuple(batch["rgb"].shape[-2:])
    loader_img_s = counted / loader_s
    # A training step's time does not depend on the pixels: random frames of the loader's shape.
    step_img_s = training_images_per_s(build_learner(cfg, init_weights=False), size, batch_size, device, steps=7)
    return {"learner": DEMO_LEARNER, "frame": [96, 128], "size": list(cfg["data"]["size"]), "batch": batch_size,
            "workers": workers, "loader_img_s": round(loader_img_s, 1), "train_step_img_s": round(step_img_s, 1),
            "ratio": round(loader_img_s / step_img_s, 2)}


def print_table(rows: list[dict], peak: float) -> None:
    cols = [("model", "model", "{}"), ("size", "size", "{}"), ("params", "params", "{:,}"), ("gmacs", "GMACs", "{:.3f}"),
            ("latency_ms", "b1 ms", "{:.1f}"), ("throughput_b8", "b8 img/s", "{:.2f}"),
            ("train_img_s", "train img/s", "{:.2f}"), ("peak_mb_b1", "peak MB", "{:.0f}"),
            ("gflops", "GFLOP/s", "{:.1f}"), ("of_peak", "of fp32 mm", "{:.0%}")]
    cells = [[h for _, h, _ in cols]]
    for row in rows:
        row = {**row, "of_peak": row["gflops"] / peak}
        cells.append([f.format(row[k]) if k in row else "-" for k, _, f in cols])
    widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    for line in cells:
        print("  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", default="adabins,bts,ldrn")
    parser.add_argument("--sizes", default="416x544,192x256", help="comma-separated HxW")
    parser.add_argument("--repeats", type=int, default=5, help="timed batch-1 passes")
    parser.add_argument("--repeats-b8", type=int, default=2, dest="repeats_b8", help="timed batch-8 passes")
    parser.add_argument("--repeats-paired", type=int, default=41, dest="repeats_paired",
                        help="pairs of alternating ensemble / average passes: their latency ratio and b1 rows")
    parser.add_argument("--train-batch", type=int, default=2, dest="train_batch")
    parser.add_argument("--train-steps", type=int, default=2, dest="train_steps")
    parser.add_argument("--skip-train", action="store_true", dest="skip_train")
    parser.add_argument("--skip-extras", action="store_true", dest="skip_extras",
                        help="models only: no cache, loader or renderer figures")
    parser.add_argument("--plain", action="store_true",
                        help="time inference on the plain models (no BatchNorm folding, no channels_last, "
                             "system allocator settings), to measure what the fast path gains")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the fast models")
    bench_cache.add_meta_overrides(parser)  # the models and the cache figure alike
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("--peak-of", dest="peak_of", help=argparse.SUPPRESS)  # internal: one peak-memory figure
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if not args.plain:
        keep_freed_memory()
    learners = [n.strip() for n in args.learners.split(",")]
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    torch.manual_seed(0)
    if args.peak_of:
        print_peak_of(args.peak_of, learners, sizes[0], device, args)
        return {}

    machine = {"device": str(device), "cpu": cpu_model(), "fast_path": not args.plain,
               "compile": bool(args.compile), "meta_overrides": args.meta_overrides,
               "threads": torch.get_num_threads(), "torch": torch.__version__}
    rates = [matmul_rates(device)]
    print(f"machine: {machine} {rates[0]}", flush=True)
    models = build_models(learners, args.meta_overrides)  # as trained: cost and training figures
    for model, _ in models.values():  # the training engine's layout (train.channels_last), unless --plain
        model.to(device, memory_format=torch.preserve_format if args.plain else torch.channels_last)
    if args.plain:
        timed = {name: model for name, (model, _) in models.items()}
    else:
        fast = build_models(learners, args.meta_overrides)
        prepare_for_inference(fast["ensemble"][0].to(device))  # folds the bases and meta every row shares
        timed = {name: compile_for_inference(model) if args.compile else model for name, (model, _) in fast.items()}
    rows = []
    for size in sizes:
        for name in models:
            rows.append(model_row(name, models[name], timed[name], size, device, args))
            print(f"  measured {name} at {rows[-1]['size']}", flush=True)

    rates.append(matmul_rates(device))   # again after the models: a slow spell at the start would
    for dtype in ("fp32", "bf16"):        # under-measure the peak and inflate every "of fp32 mm"
        machine[f"{dtype}_matmul_gflops"] = max(r[dtype] for r in rates)
        machine[f"{dtype}_matmul_gflops_each"] = [r[dtype] for r in rates]
    peak = machine["fp32_matmul_gflops"]
    ratios, passes = {}, {}
    for size in sizes:
        tag = f"{size[0]}x{size[1]}"
        by = {r["model"]: r for r in rows if r["size"] == tag}
        paired = passes[tag] = paired_latency(timed["ensemble"], timed["average"], size, device, args.repeats_paired)
        set_latency(by["ensemble"], paired["model_ms"])
        set_latency(by["average"], paired["reference_ms"])
        ratios[f"ensemble_over_average_latency_{tag}"] = paired["ratio"]
        ratios[f"ensemble_over_average_latency_{tag}_ci95"] = paired["ratio_ci95"]
        ratios[f"ensemble_over_average_latency_{tag}_of_medians"] = round(   # the table's b1 rows
            paired["model_ms"] / paired["reference_ms"], 3)
        ratios[f"ensemble_of_fp32_peak_{tag}"] = round(by["ensemble"]["gflops"] / peak, 3)
    result = {"machine": machine, "models": rows, "ratios": ratios, "ensemble_vs_average_passes": passes}
    if not args.skip_extras:
        result["cache"] = cache_in_fresh_process(["--size", "416x544", "--frames", "64", "--batch-size", "4",
                                                  *set_args(args.meta_overrides)])
        ratios["cache_speedup"] = result["cache"]["speedup"]
        result["loader"] = loader_vs_step(device)
        ratios["loader_over_train_step"] = result["loader"]["ratio"]
        result["synth"] = bench_synth.main(["--frames", "100"])
        ratios["synth_frames_per_s"] = result["synth"]["frames_per_s"]

    print()
    print_table(rows, peak)
    print()
    for key, value in ratios.items():
        print(f"{key}: {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"written {args.out}")
    return result


if __name__ == "__main__":
    main()
