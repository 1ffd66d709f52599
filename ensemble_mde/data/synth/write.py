"""The dataset writer: `synthesize` renders each room's views as one task, in parallel
processes, and writes the DenseDepth layout (JPEG or PNG RGB, 16-bit millimetre depth PNGs;
CSV lists and synthetic.json last), byte-identical for any number of workers (by default
`usable_cpus`, the cores this process may run on).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ensemble_mde.data.synth.render import MAX_DEPTH, MIN_DEPTH, VIEWS_PER_ROOM, _render_posed, intrinsics
from ensemble_mde.data.synth.scene import SPLITS, _rng, build_room
from ensemble_mde.errors import ConfigError
from ensemble_mde.io import atomic_write_json, atomic_write_text

SYNTH_VERSION = 1
_JPEG_QUALITY = 95
_PNG_COMPRESS = 1


def _save(img: Image.Image, path: Path, **kwargs) -> None:
    """Write an image to a temporary name beside `path`, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, **kwargs)
    os.replace(tmp, path)


def _frame_paths(split: str, scene: str, index: int, view: int) -> tuple[str, str]:
    """(rgb, depth) paths relative to the output folder, in the DenseDepth layout."""
    if split == "test":
        stem = f"data/nyu2_test/{index:05d}"
        return f"{stem}_colors.png", f"{stem}_depth.png"
    folder = f"data/nyu2_{split}/{scene}_out"
    return f"{folder}/{view + 1}.jpg", f"{folder}/{view + 1}.png"


def _write_frame(out_dir: Path, rgb_rel: str, depth_rel: str, rgb: np.ndarray, depth: np.ndarray) -> None:
    mm = np.round(depth * 1000).astype(np.uint16)
    rgb_img = Image.fromarray(rgb)
    if rgb_rel.endswith(".jpg"):
        _save(rgb_img, out_dir / rgb_rel, format="JPEG", quality=_JPEG_QUALITY)
    else:
        _save(rgb_img, out_dir / rgb_rel, format="PNG", compress_level=_PNG_COMPRESS)
    _save(Image.fromarray(mm), out_dir / depth_rel, format="PNG", compress_level=_PNG_COMPRESS)


@dataclass(frozen=True)
class _RoomTask:
    """Render frames [first, first + views) of `split`, all views of room `room` (scene `scene`)."""

    out_dir: str
    seed: int
    split: str
    room: int
    scene: str
    first: int
    views: int
    size: tuple[int, int]


def _run_room(task: _RoomTask) -> int:
    """Render and write one room's frames; returns how many."""
    out = Path(task.out_dir)
    room = build_room(task.seed, task.split, task.room)
    for view in range(task.views):
        index = task.first + view
        rgb_rel, depth_rel = _frame_paths(task.split, task.scene, index, view)
        (out / rgb_rel).parent.mkdir(parents=True, exist_ok=True)
        rgb, depth = _render_posed(room, _rng(task.seed, task.split, task.room, 1 + view), task.size)
        _write_frame(out, rgb_rel, depth_rel, rgb, depth)
    return task.views


def _plan(out_dir: Path, counts: dict, size, seed: int):
    """Room tasks of every split and the scene names per split; scene numbers run on across splits."""
    tasks, scenes, number = [], {}, 0
    for split in SPLITS:
        n = counts.get(split, 0)
        scenes[split] = []
        for room in range(-(-n // VIEWS_PER_ROOM)):
            scene = f"room_{number:05d}"
            number += 1
            scenes[split].append(scene)
            first = room * VIEWS_PER_ROOM
            tasks.append(_RoomTask(str(out_dir), seed, split, room, scene, first, min(VIEWS_PER_ROOM, n - first), size))
    return tasks, scenes


def _check_args(counts, size, seed, workers) -> tuple[dict, tuple[int, int]]:
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise ConfigError(f"unknown split(s) {sorted(unknown)}; expected {list(SPLITS)}", "counts")
    for split, n in counts.items():
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ConfigError(f"frame count of {split} must be a non-negative integer, got {n!r}", "counts")
    if len(size) != 2 or any(not isinstance(v, (int, np.integer)) or v < 8 for v in size):
        raise ConfigError(f"size must be (H, W) with both at least 8 pixels, got {size!r}", "size")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}", "seed")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a positive integer, got {workers!r}", "workers")
    return {s: int(counts.get(s, 0)) for s in SPLITS}, (int(size[0]), int(size[1]))


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())


def synthesize(out_dir, counts=None, size=(240, 320), seed: int = 0, progress: bool = True, workers=None) -> dict:
    """Render a synthetic NYU-like dataset into `out_dir` (DenseDepth layout, 16-bit mm depth PNGs).

    counts: frames per split, e.g. {"train": 2000, "val": 200, "test": 200}; size: (H, W);
    workers: processes (default: the CPUs this process may use). CSV lists and
    synthetic.json are written last, so an interrupted run leaves no list naming a
    missing file. Returns {"counts", "size", "seed", "workers", "seconds", "frames_per_s"}.
    """
    counts, size = _check_args(dict(counts or {"train": 2000, "val": 200, "test": 200}), tuple(size), seed, workers)
    out = Path(out_dir)
    for split in SPLITS:  # lists of an earlier run would point at files this run is replacing
        (out / "data" / f"nyu2_{split}.csv").unlink(missing_ok=True)
    (out / "synthetic.json").unlink(missing_ok=True)
    tasks, scenes = _plan(out, counts, size, int(seed))
    total = sum(counts.values())
    workers = min(workers or usable_cpus(), max(1, len(tasks)))
    start = time.perf_counter()
    bar = _progress_bar() if progress else None
    if workers == 1:
        results = map(_run_room, tasks)
        pool = None
    else:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = multiprocessing.get_context(method).Pool(workers)
        results = pool.imap_unordered(_run_room, tasks)
    try:
        if bar is not None:
            bar.start()
            job = bar.add_task("synth", total=total)
        for done in results:
            if bar is not None:
                bar.advance(job, done)
    finally:
        if bar is not None:
            bar.stop()
        if pool is not None:
            pool.terminate()
            pool.join()
    seconds = time.perf_counter() - start
    for split in SPLITS:
        lines = []
        for task in (t for t in tasks if t.split == split):
            for view in range(task.views):
                lines.append(",".join(_frame_paths(split, task.scene, task.first + view, view)) + "\n")
        atomic_write_text("".join(lines), out / "data" / f"nyu2_{split}.csv")
    fx, fy, cx, cy = intrinsics(size)
    atomic_write_json({
        "generator": "ensemble-mde synthetic indoor scenes",
        "version": SYNTH_VERSION,
        "seed": int(seed),
        "size": list(size),
        "counts": counts,
        "views_per_room": VIEWS_PER_ROOM,
        "intrinsics": {"fx": fx, "fy": fy, "cx": cx, "cy": cy},
        "depth": {"png": "uint16 millimetres", "min_m": MIN_DEPTH, "max_m": MAX_DEPTH, "kind": "z-depth"},
        "scenes": scenes,
    }, out / "synthetic.json")
    return {"counts": counts, "size": list(size), "seed": int(seed), "workers": workers,
            "seconds": round(seconds, 3), "frames_per_s": round(total / max(seconds, 1e-9), 2)}
