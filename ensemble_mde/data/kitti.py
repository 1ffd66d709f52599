"""KITTI's Eigen split as BTS and AdaBins read it (docs/design.md §3; cleinc/bts and
shariqfarooq123/AdaBins dataloader.py, as the SG study's copy of it does).

List files of `<rgb> <depth or None> <focal>` lines: the RGB path relative to the raw-data
root (`2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png`), the depth path
relative to the annotated-depth root (`2011_09_26_drive_0002_sync/proj_depth/groundtruth/
image_02/0000000069.png`; BTS's data_path and gt_path), `None` where the frame has no ground
truth (45 of the 697 test lines). Those lines are left out of every split: nothing can score
or train on them. Depth is a 16-bit PNG of metres x 256, 0 = no depth (the LiDAR GT is
sparse). Every frame is cut to BTS's kb_crop, 352x1216 at the bottom, centred, RGB and depth
alike, for training and evaluation. The source that reads it is `dataset.KittiSource`.

    data.path            a list file or a folder holding *train*.txt / *test*.txt (as for bts)
    data.train_root      raw-data root (default: the list's folder, else data.path)
    data.train_depth_root annotated-depth root (default: <raw root>/data_depth_annotated, BTS's
                         layout, else the raw root itself); test_root / test_depth_root likewise
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ensemble_mde.data import readers
from ensemble_mde.errors import DataError

KITTI_DEPTH_SCALE = 256.0  # 16-bit PNG value per metre
KB_CROP = (352, 1216)      # (height, width) BTS's do_kb_crop keeps
NO_DEPTH = "None"          # the depth column of a line without ground truth
DEPTH_ROOT = "data_depth_annotated"  # where BTS's KITTI layout keeps the depth under the raw root


def kb_crop_box(height: int, width: int, where: str) -> tuple[int, int]:
    """(top, left) of BTS's kb_crop in a height x width frame: top = H - 352, left =
    (W - 1216) // 2. A smaller frame is a DataError naming `where`."""
    crop_h, crop_w = KB_CROP
    if height < crop_h or width < crop_w:
        raise DataError(f"frame is {height}x{width}; KITTI's kb_crop needs at least {crop_h}x{crop_w}", where)
    return height - crop_h, (width - crop_w) // 2


def kb_crop(rgb: torch.Tensor, depth: np.ndarray, where: str) -> tuple[torch.Tensor, np.ndarray]:
    """rgb [3,H,W] and depth [H,W] of one frame cut to the kb_crop box (`kb_crop_box`)."""
    top, left = kb_crop_box(*depth.shape, where=where)
    rows, cols = slice(top, top + KB_CROP[0]), slice(left, left + KB_CROP[1])
    return rgb[:, rows, cols].contiguous(), np.ascontiguousarray(depth[rows, cols])


def kitti_scene(rgb: str) -> str:
    """The drive a listed image belongs to (`2011_09_26_drive_0002_sync`): neighbouring frames
    of one drive are near copies, so validation is carved by drive."""
    found = readers.KITTI_DRIVE.search(rgb)
    return found.group(0) if found else Path(rgb).parent.name or rgb
