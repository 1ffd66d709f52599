"""Synthetic NYU-like indoor scenes: the embedded default dataset (DESIGN.md §3).

A room is a box of random size holding furniture-like boxes (against the walls, or
free-standing and rotated about the vertical axis; tables are a top and four legs),
cylinders, spheres, rugs, pictures, a door and a window, with procedural textures
(checker, stripes, value noise, wood planks, tiles, bricks) and one ceiling lamp: a
point light with Lambertian shading and hard shadows, plus ambient light. A pinhole
camera with NYU's intrinsics (scaled to the output size) looks into the room from
several poses. The ray caster is vectorised over the whole image; each primitive is
intersected only inside the image rectangle its bounds project to. Depth is the exact
z-depth along the optical axis in metres (as NYU's), within [0.5, 10] at every pixel.

Every frame is a pure function of (seed, split, frame index), so rooms render in
parallel processes and the files are byte-identical for any number of workers. The
output is the DenseDepth layout with 16-bit millimetre depth PNGs, which the
`densedepth` reader serves.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ensemble_mde.data.synth.geometry import Box, Cylinder, Sphere, _nonzero
from ensemble_mde.data.synth.scene import _ROOM_FACES, SPLITS, Light, Room, _rng, build_room
from ensemble_mde.data.synth.textures import _F32, Material
from ensemble_mde.errors import ConfigError
from ensemble_mde.io import atomic_write_json, atomic_write_text

SYNTH_VERSION = 1
NYU_FX, NYU_FY, NYU_CX, NYU_CY = 518.8579, 519.4696, 325.5824, 253.7362  # pixels at 640x480
MIN_DEPTH, MAX_DEPTH = 0.5, 10.0  # metres; every pixel of every frame lies in this range
VIEWS_PER_ROOM = 6
_JPEG_QUALITY = 95
_PNG_COMPRESS = 1
_MAX_POSE_TRIES = 500


def intrinsics(size: tuple[int, int]) -> tuple[float, float, float, float]:
    """NYU's (fx, fy, cx, cy) in pixels, scaled from 640x480 to size = (H, W)."""
    h, w = size
    return NYU_FX * w / 640, NYU_FY * h / 480, NYU_CX * w / 640, NYU_CY * h / 480


# ----------------------------------------------------------------------------- camera and rendering


@dataclass
class Pose:
    """Camera centre (metres) and orientation: yaw about z (0 looks along +x), pitch up, roll (radians)."""

    x: float
    y: float
    z: float
    yaw: float
    pitch: float
    roll: float = 0.0


class Camera:
    """A pinhole camera: x right, y down, z forward; rays d = forward + xc*right + yc*down with
    xc = (col - cx) / fx, yc = (row - cy) / fy, so a hit at o + t*d has z-depth t."""

    def __init__(self, pose: Pose, size: tuple[int, int]):
        self.size = size
        self.fx, self.fy, self.cx, self.cy = intrinsics(size)
        self.origin = (float(pose.x), float(pose.y), float(pose.z))
        cy_, sy_, cp, sp = math.cos(pose.yaw), math.sin(pose.yaw), math.cos(pose.pitch), math.sin(pose.pitch)
        forward = np.array([cp * cy_, cp * sy_, sp])
        right0 = np.array([sy_, -cy_, 0.0])
        down0 = np.cross(forward, right0)
        cr, sr = math.cos(pose.roll), math.sin(pose.roll)
        self.basis = np.stack([cr * right0 + sr * down0, cr * down0 - sr * right0, forward])  # rows: right, down, fwd

    def directions(self):
        """Ray directions (dx, dy, dz), each [H, W] float32, with unit component along the optical axis."""
        h, w = self.size
        xc = ((np.arange(w) - self.cx) / self.fx).astype(_F32)[None, :]
        yc = ((np.arange(h) - self.cy) / self.fy).astype(_F32)[:, None]
        (rx, ry, rz), (dx, dy, dz), (fx, fy, fz) = self.basis.tolist()
        return tuple(f + xc * r + yc * d for r, d, f in ((rx, dx, fx), (ry, dy, fy), (rz, dz, fz)))

    def window(self, points: np.ndarray, near: float):
        """(rows, cols) slices of the pixels whose rays can meet the convex hull of `points` [N, 3]
        in front of the plane z = near (camera coordinates), or None if there are none."""
        q = (points - np.array(self.origin)) @ self.basis.T
        front = q[:, 2] >= near
        if not front.any():
            return None
        pts = q[front]
        if not front.all():  # clip the hull at z = near: add where its point pairs cross the plane
            a, b = q[front][:, None, :], q[~front][None, :, :]
            s = (near - a[..., 2:]) / (b[..., 2:] - a[..., 2:])
            pts = np.concatenate([pts, (a + s * (b - a)).reshape(-1, 3)])
        u = self.fx * pts[:, 0] / pts[:, 2] + self.cx
        v = self.fy * pts[:, 1] / pts[:, 2] + self.cy
        h, w = self.size
        c0, c1 = max(0, math.floor(u.min())), min(w, math.ceil(u.max()) + 1)
        r0, r1 = max(0, math.floor(v.min())), min(h, math.ceil(v.max()) + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)


def _cast(room: Room, cam: Camera):
    """Primary rays: z-depth [H, W] float32 and surface id [H, W] int16 of the nearest hit."""
    dx, dy, dz = cam.directions()
    ox, oy, oz = cam.origin
    exits, faces = [], []
    for axis, d, o in ((0, dx, ox), (1, dy, oy), (2, dz, oz)):
        ds = _nonzero(d)
        exits.append(np.where(ds > 0, _F32(room.size[axis] - o), _F32(-o)) / ds)
        faces.append((ds > 0).astype(np.int16) + np.int16((2, 4, 0)[axis]))  # see _ROOM_FACES
    tx, ty, tz = exits
    t = np.minimum(np.minimum(tx, ty), tz)
    sid = np.where(t == tz, faces[2], np.where(t == tx, faces[0], faces[1]))
    for k, obj in enumerate(room.objects):
        win = cam.window(obj.corners, near=0.05)
        if win is None:
            continue
        enter, leave = obj.interval(ox, oy, oz, dx[win], dy[win], dz[win])
        sub = t[win]
        closer = (enter <= leave) & (enter > 0) & (enter < sub)
        np.copyto(sub, enter, where=closer)
        np.copyto(sid[win], _ROOM_FACES + k, where=closer)
    return t, sid, (dx, dy, dz)


def _shadows(room: Room, px, py, pz, sid) -> np.ndarray:
    """[H*W] bool, False where the segment from the surface point to the light is blocked."""
    lx, ly, lz = room.light.position
    vx, vy, vz = px - lx, py - ly, pz - lz
    d2 = vx * vx + vy * vy + vz * vz
    inv = 1 / np.sqrt(d2)
    ux, uy, uz = vx * inv, vy * inv, vz * inv
    cos = np.empty_like(ux)  # of the angle between a pixel's and an occluder's direction from the light
    lit = np.ones(px.shape, bool)
    for k, obj in enumerate(room.objects):
        if not obj.casts_shadow:
            continue
        centre, radius = obj.bounding_sphere
        w = centre - np.array(room.light.position)
        dist = float(np.linalg.norm(w))
        if dist > radius:  # candidates: inside the cone of the bounding sphere seen from the light
            ax, ay, az = (w / dist).tolist()
            np.multiply(ux, ax, out=cos)
            cos += uy * ay
            cos += uz * az
            idx = np.flatnonzero(cos > math.sqrt(1 - (radius / dist) ** 2))
        else:
            idx = np.arange(px.size)
        idx = idx[sid[idx] != _ROOM_FACES + k]  # a convex object's own shadow is its back faces
        if idx.size == 0:
            continue
        qx, qy, qz = px[idx], py[idx], pz[idx]
        enter, leave = obj.interval(qx, qy, qz, lx - qx, ly - qy, lz - qz)
        blocked = (enter <= leave) & (leave > 1e-4) & (enter < 1 - 1e-4)
        lit[idx[blocked]] = False
    return lit


def _shade(room: Room, cam: Camera, t, sid, dirs) -> np.ndarray:
    """RGB image [H, W, 3] uint8 of the hits (z-depth t, surface ids sid)."""
    h, w = cam.size
    ox, oy, oz = cam.origin
    px, py, pz = ((o + t * d).ravel() for o, d in zip((ox, oy, oz), dirs))
    sid = sid.ravel()
    lit = _shadows(room, px, py, pz, sid)
    surfaces = room.faces + room.objects
    order = np.argsort(sid, kind="stable")
    ends = np.cumsum(np.bincount(sid, minlength=len(surfaces)))
    out = np.empty((h * w, 3), _F32)
    depth = t.ravel()
    for s, surf in enumerate(surfaces):
        idx = order[ends[s - 1] if s else 0 : ends[s]]
        if idx.size == 0:
            continue
        qx, qy, qz = px[idx], py[idx], pz[idx]
        nx, ny, nz, u, v = surf.surface(qx, qy, qz)
        # one pixel's extent on the surface: depth / f, stretched by 1/sqrt(cos) of the viewing angle
        ex, ey, ez = qx - ox, qy - oy, qz - oz
        cos = np.abs(nx * ex + ny * ey + nz * ez) / np.sqrt(ex * ex + ey * ey + ez * ez)
        footprint = depth[idx] / (_F32(cam.fx) * np.sqrt(np.maximum(cos, _F32(0.05))))
        albedo = surf.material.sample(u, v, surf.offset, footprint)
        if surf.material.emissive:
            out[idx] = albedo
        else:
            out[idx] = albedo * np.sqrt(room.light.shade(qx, qy, qz, nx, ny, nz, lit[idx]))[:, None]
    gain = 255 * min(2.5, max(0.7, 0.45 / max(float(out.mean()), 1e-3)))  # auto exposure
    rgb = np.clip(out * (room.light.tint * _F32(gain)) + _F32(0.5), 0, 255).astype(np.uint8)
    return rgb.reshape(h, w, 3)


def _sample_pose(rng, room: Room) -> Pose:
    """A standing camera (1.0-1.8 m high) in free space, aimed near an object or a point in the room."""
    lx, ly, lz = room.size
    solid = [o.aabb for o in room.objects if o.casts_shadow]
    for _ in range(1000):
        x, y = rng.uniform(0.35, lx - 0.35), rng.uniform(0.35, ly - 0.35)
        z = rng.uniform(1.0, min(1.8, lz - 0.5))
        p = np.array([x, y, z])
        if not any(((p > lo - 0.3) & (p < hi + 0.3)).all() for lo, hi in solid):
            break
    else:
        raise RuntimeError("no free place for the camera in this room")
    for _ in range(20):  # look across the room: at an object or a point at least 1.5 m away
        if solid and rng.random() < 0.6:
            lo, hi = solid[int(rng.integers(len(solid)))]
            target = (lo + hi) / 2
        else:
            target = np.array([rng.uniform(0, lx), rng.uniform(0, ly), rng.uniform(0.3, 1.5)])
        ground = math.hypot(target[0] - x, target[1] - y)
        if ground >= 1.5:
            break
    if ground < 0.8:
        yaw, pitch = rng.uniform(-math.pi, math.pi), rng.normal(-0.15, 0.15)
    else:
        yaw = math.atan2(target[1] - y, target[0] - x) + rng.normal(0, 0.15)
        pitch = math.atan2(target[2] - z, ground) + rng.normal(0, 0.08)
    return Pose(x, y, z, yaw, float(np.clip(pitch, -0.6, 0.25)), float(np.clip(rng.normal(0, 0.03), -0.08, 0.08)))


def render_view(room: Room, pose: Pose, size: tuple[int, int]):
    """RGB [H, W, 3] uint8 and z-depth [H, W] float32 (metres) of `room` seen from `pose`."""
    cam = Camera(pose, size)
    t, sid, dirs = _cast(room, cam)
    return _shade(room, cam, t, sid, dirs), t


def _render_posed(room: Room, rng, size):
    """Draw poses until every pixel's depth lies in [MIN_DEPTH, MAX_DEPTH], then shade that view."""
    for _ in range(_MAX_POSE_TRIES):
        cam = Camera(_sample_pose(rng, room), size)
        t, sid, dirs = _cast(room, cam)
        if t.min() >= MIN_DEPTH and t.max() <= MAX_DEPTH:
            return _shade(room, cam, t, sid, dirs), t
    raise RuntimeError(f"no camera pose with depth in [{MIN_DEPTH}, {MAX_DEPTH}] m in {_MAX_POSE_TRIES} tries")


def render_frame(seed: int, split: str = "train", index: int = 0, size: tuple[int, int] = (240, 320)):
    """Frame `index` of `split` for `seed`: RGB [H, W, 3] uint8 and z-depth [H, W] float32 metres."""
    room, view = divmod(index, VIEWS_PER_ROOM)
    return _render_posed(build_room(seed, split, room), _rng(seed, split, room, 1 + view), tuple(size))


# ----------------------------------------------------------------------------- dataset writer


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
