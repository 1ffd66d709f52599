"""Bytes the freeze-mode prediction cache takes per frame per base, and what that makes for
the BTS sync training set (24,231 frames, 3 bases, at the frames' resolution).

Fills a real PredictionCache (meta_learner/cache.py: float16 maps, 2-D prediction coding,
shuffle + gzip) with the given base runs on `--frames` frames (rendered synthetic rooms at
`--size`, by default NYU's 480x640, or the train split of `--data`), reads every map back,
compares it with the float16 of the prediction recomputed one frame at a time (the coding is
lossless, but the fill runs batches, whose fp32 sums may round a pixel to the neighbouring
float16: the relative difference stays within one float16 step, 2**-10), and prints one
JSON line: bytes per frame per base (the file's size / frames / bases, HDF5 overhead
included), the plain float16 size, the ratio, the extrapolation, and the fill and read times.

    python benchmarks/bench_cache_size.py --bases runs/adabins_cpu,runs/bts_cpu,runs/ldrn_cpu --frames 32
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ensemble_mde import runs
from ensemble_mde.config import parse_size
from ensemble_mde.config import load_config
from ensemble_mde.data import build_dataset
from ensemble_mde.data.synth import synthesize
from ensemble_mde.io import file_sha256
from ensemble_mde.profiling import cpu_model
from ensemble_mde.speed import keep_freed_memory
from ensemble_mde.loading import load_run
from meta_learner.cache import PredictionCache, data_identity

BTS_SYNC_FRAMES = 24_231
STUDY_BASES = 3


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", required=True, metavar="RUN,RUN,...", help="trained base run folders")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=parse_size, default=(480, 640), metavar="HxW",
                        help="synthetic frame size (default NYU's 480x640)")
    parser.add_argument("--data", metavar="PATH", help="a dataset whose train split is cached instead")
    parser.add_argument("--batch-size", type=int, default=4, dest="batch_size")
    args = parser.parse_args(argv)
    keep_freed_memory()
    bases = [load_run(r)[0] for r in args.bases.split(",")]
    hashes = [file_sha256(runs.resolve_checkpoint(r)) for r in args.bases.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_cache_size_") as tmp:
        tmp = Path(tmp)
        if args.data:
            root = args.data
        else:
            root = tmp / "data"
            # one val frame: the set then has its own val split and every rendered frame is cached
            synthesize(root, counts={"train": args.frames, "val": 1}, size=args.size, seed=0, progress=False)
        cfg = load_config(["defaults"], overrides=[f"data.path={root}"])
        plain = build_dataset(cfg, "train", augment=False)
        plain.records = plain.records[:args.frames]
        frame = tuple(plain[0]["rgb"].shape[-2:])
        cache = PredictionCache.open(tmp / "cache", hashes,
                                     data_identity(plain.root, plain.format, "train", [r.name for r in plain.records],
                                                   frame))
        start = time.perf_counter()
        cache.fill(plain, bases, batch_size=args.batch_size, progress=False)
        fill_s = time.perf_counter() - start
        file_bytes = cache.path.stat().st_size
        start = time.perf_counter()
        maps = [cache.get(i) for i in range(len(plain))]
        read_ms = 1000 * (time.perf_counter() - start) / len(plain)
        worst, worst_rel = 0.0, 0.0
        with torch.inference_mode():
            for i in range(len(plain)):
                rgb = plain[i]["rgb"][None]
                expected = torch.cat([b(rgb)["depth"] for b in bases], dim=1)[0].numpy().astype(np.float16)
                diff = np.abs(maps[i].numpy() - expected.astype(np.float32))
                worst = max(worst, float(diff.max()))
                worst_rel = max(worst_rel, float((diff / np.abs(expected.astype(np.float32))).max()))
    n, k = len(plain), len(bases)
    per_base = file_bytes / n / k
    plain_bytes = frame[0] * frame[1] * 2
    result = {
        "bases": args.bases.split(","), "frames": n, "frame_size": list(frame),
        "data": str(args.data) if args.data else f"synthetic {frame[0]}x{frame[1]}",
        "bytes_per_frame_per_base": round(per_base), "float16_bytes_per_frame_per_base": plain_bytes,
        "ratio": round(plain_bytes / per_base, 2),
        "bts_sync_gb": round(per_base * BTS_SYNC_FRAMES * STUDY_BASES / 1e9, 2),
        "bts_sync_float16_gb": round(plain_bytes * BTS_SYNC_FRAMES * STUDY_BASES / 1e9, 2),
        "max_abs_diff_vs_float16_recomputed_m": worst,
        "max_rel_diff_vs_float16_recomputed": worst_rel,
        "fill_s": round(fill_s, 2), "read_ms_per_frame": round(read_ms, 2),
        "cpu": cpu_model(), "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
