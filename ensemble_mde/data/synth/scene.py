"""Rooms: the description of one (a box of six textured faces, its objects and its ceiling
lamp) and its generation as a pure function of (seed, split, room). The random generators of
rooms and views, the room's materials, and the layout that places furniture against the walls
and free-standing (tables: a top and four legs), small things on top of it and on the floor,
pictures, a door and a window on the walls, a rug and the lamp, none overlapping.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ensemble_mde.data.synth.geometry import Box, Cylinder, Sphere
from ensemble_mde.data.synth.textures import _F32, Material, _colour, _material

SPLITS = ("train", "val", "test")
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_ROOM_FACES = 6  # surface ids 0..5 are floor, ceiling, walls x=0, x=Lx, y=0, y=Ly; objects follow


def _rng(seed: int, split: str, room: int, stream: int) -> np.random.Generator:
    """The generator of one room (stream 0) or one of its views (stream 1 + view)."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], room, stream, 0x5EED]))


def _texel_offset(rng) -> tuple[float, float]:
    return float(rng.integers(0, 4096)), float(rng.integers(0, 4096))


@dataclass
class _Face:
    """One inner face of the room box: a plane across coordinate `axis`, its normal `sign` along it."""

    axis: int
    sign: float
    material: Material
    offset: tuple[float, float]

    def surface(self, px, py, pz):
        n = [0.0, 0.0, 0.0]
        n[self.axis] = self.sign
        u, v = {0: (py, pz), 1: (px, pz), 2: (px, py)}[self.axis]
        return n[0], n[1], n[2], u, v


@dataclass
class Light:
    """A point light at `position` (metres): Lambertian term intensity * cos / (1 + (d / falloff_m)^2)
    plus `ambient`; `tint` is the white balance [3] applied to the whole image."""

    position: tuple[float, float, float]
    intensity: float
    falloff_m: float
    ambient: float
    tint: np.ndarray

    def shade(self, px, py, pz, nx, ny, nz, lit):
        """Irradiance [N] at surface points with normals n; `lit` [N] bool is False where shadowed."""
        lx, ly, lz = self.position[0] - px, self.position[1] - py, self.position[2] - pz
        d2 = lx * lx + ly * ly + lz * lz
        cos = (nx * lx + ny * ly + nz * lz) / np.sqrt(d2)
        direct = np.maximum(cos, _F32(0)) * (self.intensity / (1 + d2 * _F32(1 / self.falloff_m**2)))
        return self.ambient * (_F32(0.9) + _F32(0.1) * nz) + direct * lit


@dataclass
class Room:
    """A box room [0, Lx] x [0, Ly] x [0, Lz] (metres, z up) with its materials, objects and light."""

    size: tuple[float, float, float]
    faces: list[_Face]
    objects: list
    light: Light

    @classmethod
    def build(cls, size, face_materials, objects, light) -> Room:
        """`face_materials`: floor, ceiling, wall x=0, wall x=Lx, wall y=0, wall y=Ly."""
        lx, ly, lz = (float(v) for v in size)
        planes = [(2, 1.0), (2, -1.0), (0, 1.0), (0, -1.0), (1, 1.0), (1, -1.0)]  # order of _ROOM_FACES
        faces = [_Face(axis, sign, m, (0.0, 0.0)) for (axis, sign), m in zip(planes, face_materials)]
        return cls((lx, ly, lz), faces, list(objects), light)


class _Layout:
    """Objects placed so far, with their axis-aligned bounds, to keep new ones from overlapping."""

    def __init__(self, size):
        self.size = size
        self.objects: list = []
        self.bounds: list[np.ndarray] = []

    def fits(self, obj, gap: float = 0.03) -> bool:
        """Inside the room, `gap` metres clear of every solid object sideways; stacking on top is fine."""
        lo, hi = obj.aabb
        if (lo[:2] < -1e-9).any() or hi[0] > self.size[0] + 1e-9 or hi[1] > self.size[1] + 1e-9:
            return False
        return all((lo[:2] >= b[1, :2] + gap).any() or (hi[:2] <= b[0, :2] - gap).any()
                   or lo[2] >= b[1, 2] - 1e-6 or hi[2] <= b[0, 2] + 1e-6 for b in self.bounds)

    def add(self, obj, solid: bool = True) -> None:
        self.objects.append(obj)
        if solid:
            self.bounds.append(obj.aabb)

    def try_add(self, objs: list) -> bool:
        """Add a group of objects (e.g. a table's top and legs) if its first member fits."""
        if not self.fits(objs[0]):
            return False
        for o in objs:
            self.add(o)
        return True


def _against_wall(rng, size, wall: int, width: float, depth: float, z0: float, z1: float, material, gap: float):
    """A box `width` long along wall 0..3 (x=0, x=Lx, y=0, y=Ly), `depth` deep, `gap` metres off the
    wall, at a random place along it."""
    lx, ly, _ = size
    along = rng.uniform(width / 2 + 0.05, (ly if wall < 2 else lx) - width / 2 - 0.05)
    out = gap + depth / 2
    if wall < 2:
        return Box(out if wall == 0 else lx - out, along, depth / 2, width / 2, z0, z1, 0.0, material, _texel_offset(rng))
    return Box(along, out if wall == 2 else ly - out, width / 2, depth / 2, z0, z1, 0.0, material, _texel_offset(rng))


def _furniture_material(rng) -> Material:
    c0 = _colour(rng, (0, 1), (0.1, 0.7), (0.25, 0.9))
    c1 = np.clip(c0 * rng.uniform(0.5, 0.8) + _colour(rng, (0, 1), (0, 0.5), (0, 0.25)), 0, 1).astype(_F32)
    return _material(rng, ["plain", "wood", "noise", "stripes", "checker", "wood"], 128, (0.3, 1.0), c0, c1)


def _room_materials(rng) -> list[Material]:
    """Floor, ceiling and four wall materials."""
    wall_c = _colour(rng, (0, 1), (0.0, 0.3), (0.6, 0.95))
    wall = _material(rng, ["plain", "noise", "stripes", "plain"], 256, (0.8, 2.0), wall_c,
                     np.clip(wall_c * rng.uniform(0.75, 0.95), 0, 1).astype(_F32))
    accent = _material(rng, ["bricks", "stripes", "noise", "tiles"], 256, (0.8, 2.0),
                       _colour(rng, (0, 1), (0.1, 0.6), (0.4, 0.9)), _colour(rng, (0, 1), (0.0, 0.3), (0.3, 0.9)))
    floor_kind = ["wood", "tiles", "checker", "noise"][int(rng.integers(4))]
    if floor_kind == "wood":
        c0 = _colour(rng, (0.03, 0.11), (0.4, 0.8), (0.25, 0.55))
        c1 = _colour(rng, (0.03, 0.11), (0.3, 0.7), (0.5, 0.8))
    else:
        c0 = _colour(rng, (0, 1), (0.0, 0.4), (0.4, 0.9))
        c1 = _colour(rng, (0, 1), (0.0, 0.4), (0.15, 0.6))
    floor = _material(rng, [floor_kind], 256, (0.8, 2.0), c0, c1)
    ceiling = _material(rng, ["plain"], 256, (1.0, 2.0), _colour(rng, (0, 1), (0, 0.08), (0.8, 0.95)), c0)
    walls = [wall, wall, wall, wall]
    if rng.random() < 0.4:
        walls[int(rng.integers(4))] = accent
    return [floor, ceiling, *walls]


def _place_wall_furniture(rng, lay: _Layout, palette, supports: list) -> None:
    lx, ly, lz = lay.size
    for _ in range(int(rng.integers(2, 7))):
        wall = int(rng.integers(4))
        length = ly if wall < 2 else lx
        width = rng.uniform(0.5, min(2.2, length - 0.3))
        depth = rng.uniform(0.3, min(1.0, 0.3 * (lx if wall < 2 else ly)))
        height = rng.uniform(0.4, min(2.1, lz - 0.5))
        for _ in range(10):
            box = _against_wall(rng, lay.size, wall, width, depth, 0.0, height, palette[int(rng.integers(len(palette)))],
                                rng.uniform(0.0, 0.05))
            if lay.try_add([box]):
                if height < 1.6:
                    supports.append(box)
                break


def _table(rng, x, y, w, d, height, yaw, material) -> list[Box]:
    """A table: top slab first (the group's footprint), then four legs."""
    thick, leg, inset = rng.uniform(0.03, 0.06), rng.uniform(0.04, 0.08), rng.uniform(0.0, 0.08)
    top = Box(x, y, w / 2, d / 2, height - thick, height, yaw, material, _texel_offset(rng))
    legs = []
    for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        lx_, ly_ = sx * (w / 2 - inset - leg / 2), sy * (d / 2 - inset - leg / 2)
        legs.append(Box(x + top.c * lx_ - top.s * ly_, y + top.s * lx_ + top.c * ly_, leg / 2, leg / 2,
                        0.0, height - thick, yaw, material, _texel_offset(rng)))
    return [top, *legs]


def _place_free_furniture(rng, lay: _Layout, palette, supports: list) -> None:
    lx, ly, _ = lay.size
    for _ in range(int(rng.integers(1, 5))):
        for _ in range(15):
            w, d = rng.uniform(0.4, 1.8), rng.uniform(0.4, 1.1)
            x, y = rng.uniform(0.5, lx - 0.5), rng.uniform(0.5, ly - 0.5)
            yaw = 0.0 if rng.random() < 0.3 else rng.uniform(0, math.pi)
            material = palette[int(rng.integers(len(palette)))]
            if rng.random() < 0.5:
                group = _table(rng, x, y, w, d, rng.uniform(0.45, 0.8), yaw, material)
            else:
                group = [Box(x, y, w / 2, d / 2, 0.0, rng.uniform(0.3, 0.9), yaw, material, _texel_offset(rng))]
            if lay.try_add(group):
                supports.append(group[0])
                break


def _place_small_things(rng, lay: _Layout, palette, supports: list) -> None:
    """Small boxes, cylinders and spheres on top of furniture, and larger ones on the floor."""
    lx, ly, _ = lay.size
    for _ in range(int(rng.integers(2, 10))):
        material = palette[int(rng.integers(len(palette)))]
        on_top = supports and rng.random() < 0.65
        kind = rng.random()
        for _ in range(10):
            if on_top:  # r: radius of a circle holding the footprint
                base = supports[int(rng.integers(len(supports)))]
                r = rng.uniform(0.04, max(0.05, min(0.2, base.hx, base.hy) * 0.9))
                ux, uy = rng.uniform(-1, 1) * (base.hx - r), rng.uniform(-1, 1) * (base.hy - r)
                x, y, z0 = base.x + base.c * ux - base.s * uy, base.y + base.s * ux + base.c * uy, base.z1
                height = rng.uniform(0.05, 0.4)
            else:
                r = rng.uniform(0.1, 0.35)
                x, y, z0 = rng.uniform(r + 0.05, lx - r - 0.05), rng.uniform(r + 0.05, ly - r - 0.05), 0.0
                height = rng.uniform(0.2, 1.2)
            if kind < 0.4:
                obj = Box(x, y, r * rng.uniform(0.4, 0.7), r * rng.uniform(0.4, 0.7), z0, z0 + height,
                          rng.uniform(0, math.pi), material, _texel_offset(rng))
            elif kind < 0.7:
                obj = Cylinder(x, y, r, z0, z0 + height, material, _texel_offset(rng))
            else:
                obj = Sphere(x, y, z0 + r, r, material, _texel_offset(rng))
            if lay.try_add([obj]):
                break


def _place_wall_things(rng, lay: _Layout) -> None:
    """Pictures, a door and a window: thin boxes on the walls."""
    lx, ly, lz = lay.size
    things = []
    if rng.random() < 0.7:
        wood = _material(rng, ["wood", "plain"], 128, (0.8, 1.6), _colour(rng, (0.02, 0.12), (0.3, 0.8), (0.2, 0.6)),
                         _colour(rng, (0.02, 0.12), (0.3, 0.7), (0.4, 0.8)))
        things.append((rng.uniform(0.8, 1.0), 0.0, min(rng.uniform(2.0, 2.15), lz - 0.1), rng.uniform(0.03, 0.05), wood))
    if rng.random() < 0.5:
        sky = _colour(rng, (0.5, 0.65), (0.05, 0.35), (0.85, 1.0))
        glass = _material(rng, ["noise"], 128, (1.0, 3.0), sky, np.clip(sky * 0.85, 0, 1).astype(_F32), emissive=True)
        z0 = rng.uniform(0.8, 1.1)
        things.append((rng.uniform(0.8, 1.6), z0, min(z0 + rng.uniform(0.9, 1.4), lz - 0.2), 0.02, glass))
    for _ in range(int(rng.integers(0, 4))):
        art = _material(rng, ["noise", "stripes", "checker", "noise"], 128, (0.2, 0.6),
                        _colour(rng, (0, 1), (0.3, 0.9), (0.3, 1.0)), _colour(rng, (0, 1), (0.2, 0.9), (0.1, 0.8)))
        z0 = rng.uniform(1.0, 1.6)
        things.append((rng.uniform(0.3, 1.2), z0, min(z0 + rng.uniform(0.3, 0.9), lz - 0.2), rng.uniform(0.02, 0.04), art))
    for width, z0, z1, thick, material in things:
        wall = int(rng.integers(4))
        if width > (ly if wall < 2 else lx) - 0.3:
            continue
        for _ in range(10):
            if lay.try_add([_against_wall(rng, lay.size, wall, width, thick, z0, z1, material, 0.0)]):
                break


@functools.lru_cache(maxsize=4)
def build_room(seed: int, split: str, room: int) -> Room:
    """The room `room` of `split`: a pure function of its arguments."""
    rng = _rng(seed, split, room, 0)
    size = (rng.uniform(3.0, 7.5), rng.uniform(2.6, 6.5), rng.uniform(2.4, 3.2))
    if rng.random() < 0.5:
        size = (size[1], size[0], size[2])
    faces = _room_materials(rng)
    lay = _Layout(size)
    palette = [_furniture_material(rng) for _ in range(int(rng.integers(3, 6)))]
    supports: list = []
    _place_wall_furniture(rng, lay, palette, supports)
    _place_free_furniture(rng, lay, palette, supports)
    _place_small_things(rng, lay, palette, supports)
    _place_wall_things(rng, lay)
    for _ in range(int(rng.random() < 0.5)):  # a rug: thin, may lie under furniture
        w, d = rng.uniform(1.0, min(3.0, size[0] - 0.6)), rng.uniform(0.8, min(2.2, size[1] - 0.6))
        rug = _material(rng, ["noise", "stripes", "checker"], 128, (0.3, 1.2),
                        _colour(rng, (0, 1), (0.2, 0.8), (0.2, 0.8)), _colour(rng, (0, 1), (0.1, 0.8), (0.1, 0.7)))
        lay.add(Box(rng.uniform(w / 2 + 0.1, size[0] - w / 2 - 0.1), rng.uniform(d / 2 + 0.1, size[1] - d / 2 - 0.1),
                    w / 2, d / 2, 0.0, 0.01, 0.0 if rng.random() < 0.6 else rng.uniform(-0.3, 0.3), rug,
                    _texel_offset(rng)), solid=False)
    lamp_r = 0.1
    position = (rng.uniform(0.3, 0.7) * size[0], rng.uniform(0.3, 0.7) * size[1], size[2] - 2 * lamp_r)
    warm = rng.uniform(0.0, 0.12)
    light = Light(position, rng.uniform(0.9, 1.4), rng.uniform(2.5, 4.5), rng.uniform(0.12, 0.3),
                  np.array([1.0, 1.0 - warm / 2, 1.0 - warm], _F32))
    lay.add(Sphere(*position, lamp_r, Material.plain([1.0, 0.97, 0.9], emissive=True), casts_shadow=False), solid=False)
    return Room.build(size, faces, lay.objects, light)
