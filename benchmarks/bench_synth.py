"""Synthetic-scene throughput: frames per second of the renderer alone (one process) and of
`synthesize` (render + JPEG/PNG encode + write, `--workers` processes). Prints one JSON line.

    python benchmarks/bench_synth.py --frames 200 --size 240x320 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from ensemble_mde.config import parse_size
from ensemble_mde.data import synth


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200, help="frames per measurement")
    parser.add_argument("--size", type=parse_size, default=(240, 320), help="HxW")
    parser.add_argument("--workers", type=int, default=2, help="processes for render + write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    depth_min, depth_max = np.inf, -np.inf
    for index in range(args.frames):
        _, depth = synth.render_frame(args.seed, "train", index, args.size)
        depth_min, depth_max = min(depth_min, float(depth.min())), max(depth_max, float(depth.max()))
    render_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="bench_synth_") as out:
        summary = synth.synthesize(out, counts={"train": args.frames}, size=args.size, seed=args.seed + 1,
                                   progress=False, workers=args.workers)
        disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(out) for f in files)

    result = {
        "bench": "synth",
        "size": list(args.size),
        "frames": args.frames,
        "render_frames_per_s": round(args.frames / render_s, 2),  # one process, no encoding
        "render_ms_per_frame": round(1000 * render_s / args.frames, 2),
        "workers": summary["workers"],
        "frames_per_s": summary["frames_per_s"],  # render + encode + write with `workers` processes
        "cpus": synth.usable_cpus(),
        "bytes_per_frame": disk // max(1, args.frames),
        "depth_range_m": [round(depth_min, 3), round(depth_max, 3)],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
