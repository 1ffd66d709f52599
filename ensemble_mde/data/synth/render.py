"""Camera and rendering: NYU's intrinsics scaled to the output size, camera poses and the
pinhole camera, the ray caster (vectorised over the image; each primitive intersected only
inside the image rectangle its bounds project to), hard shadows, Lambertian shading with auto
exposure, and frames: a frame is a pure function of (seed, split, frame index), its z-depth
within [MIN_DEPTH, MAX_DEPTH] at every pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ensemble_mde.data.synth.geometry import _nonzero
from ensemble_mde.data.synth.scene import _ROOM_FACES, Room, _rng, build_room
from ensemble_mde.data.synth.textures import _F32

NYU_FX, NYU_FY, NYU_CX, NYU_CY = 518.8579, 519.4696, 325.5824, 253.7362  # pixels at 640x480
MIN_DEPTH, MAX_DEPTH = 0.5, 10.0  # metres; every pixel of every frame lies in this range
VIEWS_PER_ROOM = 6
_MAX_POSE_TRIES = 500


def intrinsics(size: tuple[int, int]) -> tuple[float, float, float, float]:
    """NYU's (fx, fy, cx, cy) in pixels, scaled from 640x480 to size = (H, W)."""
    h, w = size
    return NYU_FX * w / 640, NYU_FY * h / 480, NYU_CX * w / 640, NYU_CY * h / 480


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
