"""Materials of the synthetic rooms: `Material`, a tileable albedo texture with its mipmaps,
sampled at the mip level of a pixel's footprint; tileable value noise and its fractal sums;
the procedural patterns (plain, noise, checker, stripes, wood planks, tiles, bricks); and the
random colours and materials drawn from them. Also `_F32`, the float32 that every module of
the package computes in: this module imports none of the others, so all of them take it from here.
"""

from __future__ import annotations

import colorsys

import numpy as np

_WRAP = 65536.0  # texel offset (a multiple of every texture side) that keeps texture indices positive
_F32 = np.float32


class Material:
    """A tileable albedo texture covering `tile_m` x `tile_m` metres, with its mipmaps.

    texels: [side, side, 3] float32 in [0, 1], side a power of two. Emissive materials
    (lamp, window) ignore the lighting and show their albedo as is.
    """

    def __init__(self, texels: np.ndarray, tile_m: float, emissive: bool = False):
        self.side = texels.shape[0]
        self.tile_m = float(tile_m)
        self.emissive = emissive
        levels, level = [], np.asarray(texels, _F32)
        while True:
            levels.append(level.reshape(-1, 3))
            if level.shape[0] == 1:
                break
            level = (level[0::2, 0::2] + level[1::2, 0::2] + level[0::2, 1::2] + level[1::2, 1::2]) * _F32(0.25)
        self.texels = np.concatenate(levels)  # every level, finest first
        self.bases = np.cumsum([0] + [len(t) for t in levels[:-1]]).astype(np.int32)

    @classmethod
    def plain(cls, rgb, emissive: bool = False) -> Material:
        return cls(np.asarray(rgb, _F32).reshape(1, 1, 3), 1.0, emissive)

    def sample(self, u: np.ndarray, v: np.ndarray, offset: tuple[float, float], footprint: np.ndarray) -> np.ndarray:
        """Albedo [N, 3] at surface coordinates u, v [N] (metres): the nearest texel of the mip level
        whose texels are about `footprint` [N] (metres, one pixel's extent on the surface) wide."""
        k = self.side / self.tile_m
        iu = (u * k + (_WRAP + offset[0])).astype(np.int32)
        iv = (v * k + (_WRAP + offset[1])).astype(np.int32)
        _, exponent = np.frexp(footprint * _F32(k))  # floor(log2(texels per pixel)) = exponent - 1
        level = np.clip(exponent - 1, 0, len(self.bases) - 1)
        row = np.right_shift(self.side, level)
        index = self.bases[level] + (np.right_shift(iv, level) & (row - 1)) * row + (np.right_shift(iu, level) & (row - 1))
        return np.take(self.texels, index, axis=0)


def _value_noise(rng, side: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Tileable value noise [side, side] in [0, 1]: a random periodic lattice, smoothstep-interpolated."""
    lattice = rng.random((cells_y, cells_x), dtype=_F32)

    def axis(cells):
        x = np.arange(side, dtype=_F32) * _F32(cells / side)
        i0 = x.astype(np.int32)
        f = x - i0
        return i0, (i0 + 1) % cells, f * f * (3 - 2 * f)

    y0, y1, fy = axis(cells_y)
    x0, x1, fx = axis(cells_x)
    rows = lattice[:, x0] * (1 - fx) + lattice[:, x1] * fx  # [cells_y, side]
    return rows[y0] * (1 - fy)[:, None] + rows[y1] * fy[:, None]


def _fractal(rng, side: int, cells: int, octaves: int = 3, stretch: int = 1) -> np.ndarray:
    """Sum of `octaves` value-noise layers (each twice as fine, half as strong), rescaled to [0, 1].
    `stretch` > 1 makes features that many times longer along x than along y (wood grain)."""
    total = np.zeros((side, side), _F32)
    for o in range(octaves):
        c = min(cells << o, side // 2)
        total += _value_noise(rng, side, c, max(1, c // stretch)) * _F32(0.5**o)
    lo, hi = total.min(), total.max()
    return (total - lo) / _F32(max(hi - lo, 1e-6))


def _colour(rng, hue, sat, val) -> np.ndarray:
    """An RGB colour [3] from HSV ranges (hue in turns, wrapping)."""
    h = rng.uniform(*hue) % 1.0
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val)), _F32)


def _mix(c0: np.ndarray, c1: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-texel blend [side, side, 3] of two colours by weights w [side, side] in [0, 1]."""
    return c0 + (c1 - c0) * w[..., None]


def _texture(rng, kind: str, side: int, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """Albedo texels [side, side, 3] of one procedural pattern with colours c0, c1 (tileable)."""
    y, x = np.mgrid[0:side, 0:side]
    grain = _fractal(rng, side, int(rng.choice([4, 8])))
    shade = (0.9 + 0.2 * grain)[..., None]
    if kind == "plain":
        img = c0 * shade
    elif kind == "noise":  # mottled: stone, carpet, plaster
        img = _mix(c0, c1, _fractal(rng, side, int(rng.choice([2, 4, 8])), octaves=4))
    elif kind == "checker":
        k = int(rng.choice([2, 4]))
        img = _mix(c0, c1, ((x * k // side + y * k // side) % 2).astype(_F32)) * shade
    elif kind == "stripes":
        k, duty = int(rng.choice([2, 4, 8])), rng.uniform(0.2, 0.6)
        img = _mix(c0, c1, (((x * k) % side) < duty * side).astype(_F32)) * shade
        if rng.random() < 0.5:
            img = img.transpose(1, 0, 2)
    elif kind == "wood":  # planks along x; grain streaks; darker seams
        k = int(rng.choice([2, 4, 8]))
        plank = y * k // side
        streaks = _fractal(rng, side, 16, octaves=2, stretch=8)
        phase = rng.random(k).astype(_F32)[plank]
        rings = np.abs(2 * ((streaks * 5 + phase) % 1.0) - 1)
        tint = rng.uniform(0.85, 1.15, k).astype(_F32)[plank]
        img = _mix(c0, c1, rings) * (tint * (1 - 0.4 * ((y % (side // k)) < 2)))[..., None]
    elif kind == "tiles":
        k, grout = int(rng.choice([2, 4])), max(1, side // 64)
        cell = side // k
        inner = ((x % cell) >= grout) & ((y % cell) >= grout)
        tint = rng.uniform(0.9, 1.1, (k, k)).astype(_F32)[y // cell, x // cell]
        img = np.where(inner[..., None], c0 * (tint * (0.95 + 0.1 * grain))[..., None], c1)
    elif kind == "bricks":
        rows, per_row = int(rng.choice([4, 8])), int(rng.choice([2, 4]))
        rh, bw = side // rows, side // per_row
        row = y // rh
        xs = (x + (row % 2) * (bw // 2)) % side
        mortar = ((y % rh) < max(1, rh // 8)) | ((xs % bw) < max(1, bw // 16))
        tint = rng.uniform(0.8, 1.2, (rows, per_row)).astype(_F32)[row, xs // bw]
        img = np.where(mortar[..., None], c1, c0 * (tint * (0.9 + 0.2 * grain))[..., None])
    else:
        raise ValueError(f"unknown texture kind {kind!r}")
    return np.clip(img, 0, 1).astype(_F32)


def _material(rng, kinds, side: int, tile_m, c0: np.ndarray, c1: np.ndarray, emissive: bool = False) -> Material:
    """A texture of a random kind among `kinds`, tiling every U(*tile_m) metres."""
    kind = kinds[int(rng.integers(len(kinds)))]
    return Material(_texture(rng, kind, side, c0, c1), rng.uniform(*tile_m), emissive)
