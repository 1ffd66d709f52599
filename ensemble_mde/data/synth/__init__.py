"""Synthetic NYU-like indoor scenes: the embedded default dataset (docs/design.md §3).

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

Modules, each importing only those listed before it: `textures` (materials, noise,
procedural textures), `geometry` (primitives and their ray intersections), `scene` (rooms
and their generation), `render` (camera, ray casting, shading, frames) and `write` (the
dataset writer). Their public names are re-exported here.
"""

from ensemble_mde.data.synth.geometry import Box, Cylinder, Sphere
from ensemble_mde.data.synth.render import (MAX_DEPTH, MIN_DEPTH, NYU_CX, NYU_CY, NYU_FX, NYU_FY, VIEWS_PER_ROOM, Camera,
                                            Pose, intrinsics, render_frame, render_view)
from ensemble_mde.data.synth.scene import SPLITS, Light, Room, build_room
from ensemble_mde.data.synth.textures import Material
from ensemble_mde.data.synth.write import SYNTH_VERSION, synthesize, usable_cpus

__all__ = [
    "MAX_DEPTH", "MIN_DEPTH", "NYU_CX", "NYU_CY", "NYU_FX", "NYU_FY", "SPLITS", "SYNTH_VERSION", "VIEWS_PER_ROOM",
    "Box", "Camera", "Cylinder", "Light", "Material", "Pose", "Room", "Sphere",
    "build_room", "intrinsics", "render_frame", "render_view", "synthesize", "usable_cpus",
]
