"""Primitives the ray caster intersects: upright boxes (turned about the vertical axis),
vertical cylinders and spheres, each with its bounds, its ray interval (enter, leave) and its
surface normals and texture coordinates, and the float helpers they share (ray slabs, quadric
roots, an atan2 of exact float operations, seamless texture wrapping on round objects).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ensemble_mde.data.synth.textures import _F32, Material


def _nonzero(d: np.ndarray) -> np.ndarray:
    """`d` with entries within 1e-12 of zero set to 1e-12, so 1/d stays finite (and of known sign)."""
    return np.where(np.abs(d) < 1e-12, _F32(1e-12), d)


def _slab(o, d, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameters (enter, leave) of the slab lo <= o + t*d <= hi along one axis."""
    inv = 1.0 / _nonzero(d)
    t1 = (lo - o) * inv
    t2 = (hi - o) * inv
    return np.minimum(t1, t2), np.maximum(t1, t2)


def _atan2(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """atan2 to ~1e-5 rad with exact float ops only (no libm), so every process agrees bit for bit."""
    ax, ay = np.abs(x), np.abs(y)
    a = np.minimum(ax, ay) / np.maximum(np.maximum(ax, ay), _F32(1e-12))
    s = a * a
    r = ((_F32(-0.0464964749) * s + _F32(0.15931422)) * s - _F32(0.327622764)) * s * a + a
    r = np.where(ay > ax, _F32(math.pi / 2) - r, r)
    r = np.where(x < 0, _F32(math.pi) - r, r)
    return np.where(y < 0, -r, r)


@dataclass
class _Primitive:
    """Bounds shared by Box, Cylinder and Sphere (each defines `corners` [8, 3], metres)."""

    @functools.cached_property
    def aabb(self) -> np.ndarray:
        """(xmin, ymin, zmin), (xmax, ymax, zmax) as [2, 3]."""
        c = self.corners
        return np.stack([c.min(0), c.max(0)])

    @functools.cached_property
    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        lo, hi = self.aabb
        return (lo + hi) / 2, float(np.linalg.norm(hi - lo) / 2)


@dataclass
class Box(_Primitive):
    """A box standing upright: footprint centre (x, y), half sizes (hx, hy) before rotating by `yaw`
    (radians, about the vertical axis), z from z0 to z1 (metres)."""

    x: float
    y: float
    hx: float
    hy: float
    z0: float
    z1: float
    yaw: float
    material: Material
    offset: tuple[float, float] = (0.0, 0.0)
    casts_shadow: bool = True

    def __post_init__(self):
        for name in ("x", "y", "hx", "hy", "z0", "z1", "yaw"):
            setattr(self, name, float(getattr(self, name)))
        self.c, self.s = math.cos(self.yaw), math.sin(self.yaw)

    @functools.cached_property
    def corners(self) -> np.ndarray:
        lx = np.array([-1, 1, 1, -1]) * self.hx
        ly = np.array([-1, -1, 1, 1]) * self.hy
        xy = np.stack([self.x + self.c * lx - self.s * ly, self.y + self.s * lx + self.c * ly], 1)
        return np.concatenate([np.c_[xy, np.full(4, self.z0)], np.c_[xy, np.full(4, self.z1)]])

    def _local(self, px, py):
        qx, qy = px - self.x, py - self.y
        if self.yaw == 0.0:
            return qx, qy
        return self.c * qx + self.s * qy, self.c * qy - self.s * qx

    def interval(self, ox, oy, oz, dx, dy, dz):
        """Ray parameters (enter, leave) of o + t*d through the box; enter > leave means a miss."""
        lox, loy = self._local(ox, oy)
        ldx, ldy = (dx, dy) if self.yaw == 0.0 else (self.c * dx + self.s * dy, self.c * dy - self.s * dx)
        nx, fx = _slab(lox, ldx, -self.hx, self.hx)
        ny, fy = _slab(loy, ldy, -self.hy, self.hy)
        nz, fz = _slab(oz, dz, self.z0, self.z1)
        return np.maximum(np.maximum(nx, ny), nz), np.minimum(np.minimum(fx, fy), fz)

    def surface(self, px, py, pz):
        """Normal (nx, ny, nz) and texture coordinates (u, v) in metres at surface points [N]."""
        lx, ly = self._local(px, py)
        hz = (self.z1 - self.z0) / 2
        lz = pz - (self.z0 + hz)
        ex, ey, ez = np.abs(np.abs(lx) - self.hx), np.abs(np.abs(ly) - self.hy), np.abs(np.abs(lz) - hz)
        on_x = (ex <= ey) & (ex <= ez)
        on_z = ~on_x & (ez < ey)
        on_y = ~on_x & ~on_z
        nlx = np.where(on_x, np.sign(lx), _F32(0))
        nly = np.where(on_y, np.sign(ly), _F32(0))
        nz = np.where(on_z, np.sign(lz), _F32(0))
        u = np.where(on_x, ly, lx)
        v = np.where(on_z, ly, pz)
        return self.c * nlx - self.s * nly, self.s * nlx + self.c * nly, nz, u, v


@dataclass
class Cylinder(_Primitive):
    """A vertical cylinder: axis at (x, y), radius r, z from z0 to z1 (metres)."""

    x: float
    y: float
    r: float
    z0: float
    z1: float
    material: Material
    offset: tuple[float, float] = (0.0, 0.0)
    casts_shadow: bool = True

    def __post_init__(self):
        for name in ("x", "y", "r", "z0", "z1"):
            setattr(self, name, float(getattr(self, name)))
        self.arc = _seamless_arc(self.r, self.material)

    @functools.cached_property
    def corners(self) -> np.ndarray:
        return _box_corners(self.x - self.r, self.x + self.r, self.y - self.r, self.y + self.r, self.z0, self.z1)

    def interval(self, ox, oy, oz, dx, dy, dz):
        qx, qy = ox - self.x, oy - self.y
        a = np.maximum(dx * dx + dy * dy, _F32(1e-12))
        n, f = _quadratic_interval(a, qx * dx + qy * dy, qx * qx + qy * qy - self.r * self.r)
        nz, fz = _slab(oz, dz, self.z0, self.z1)
        return np.maximum(n, nz), np.minimum(f, fz)

    def surface(self, px, py, pz):
        qx, qy = px - self.x, py - self.y
        radial = np.sqrt(qx * qx + qy * qy)
        cap = np.minimum(np.abs(pz - self.z0), np.abs(pz - self.z1)) < np.abs(radial - self.r)
        inv = 1 / np.maximum(radial, _F32(1e-6))
        nz = np.where(cap, np.where(pz > (self.z0 + self.z1) / 2, _F32(1), _F32(-1)), _F32(0))
        nx = np.where(cap, _F32(0), qx * inv)
        ny = np.where(cap, _F32(0), qy * inv)
        u = np.where(cap, qx, _atan2(qy, qx) * self.arc)
        v = np.where(cap, qy, pz)
        return nx, ny, nz, u, v


@dataclass
class Sphere(_Primitive):
    """A sphere: centre (x, y, z), radius r (metres)."""

    x: float
    y: float
    z: float
    r: float
    material: Material
    offset: tuple[float, float] = (0.0, 0.0)
    casts_shadow: bool = True

    def __post_init__(self):
        for name in ("x", "y", "z", "r"):
            setattr(self, name, float(getattr(self, name)))
        self.arc = _seamless_arc(self.r, self.material)

    @functools.cached_property
    def corners(self) -> np.ndarray:
        r = self.r
        return _box_corners(self.x - r, self.x + r, self.y - r, self.y + r, self.z - r, self.z + r)

    def interval(self, ox, oy, oz, dx, dy, dz):
        qx, qy, qz = ox - self.x, oy - self.y, oz - self.z
        a = dx * dx + dy * dy + dz * dz
        return _quadratic_interval(a, qx * dx + qy * dy + qz * dz, qx * qx + qy * qy + qz * qz - self.r * self.r)

    def surface(self, px, py, pz):
        inv = _F32(1 / self.r)
        nx, ny, nz = (px - self.x) * inv, (py - self.y) * inv, (pz - self.z) * inv
        return nx, ny, nz, _atan2(ny, nx) * self.arc, pz


def _box_corners(x0, x1, y0, y1, z0, z1) -> np.ndarray:
    return np.array([[x, y, z] for z in (z0, z1) for y in (y0, y1) for x in (x0, x1)], float)


def _quadratic_interval(a, b, c):
    """Roots (t0, t1) of a t^2 + 2 b t + c = 0 (the ray inside a quadric); (inf, -inf) if none."""
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, _F32(0)))
    miss = disc < 0
    return (np.where(miss, _F32(np.inf), (-b - root) / a), np.where(miss, _F32(-np.inf), (-b + root) / a))


def _seamless_arc(r: float, material: Material) -> float:
    """Metres of texture per radian around a round object, rounded so the texture closes without a seam."""
    turns = max(1, round(2 * math.pi * r / material.tile_m))
    return turns * material.tile_m / (2 * math.pi)
