"""NYU Depth V2 data: readers for the DenseDepth, BTS and labeled-.mat layouts (and the
synthetic set, written in the DenseDepth layout), the dataset, augmentation, checks.

    from ensemble_mde.data import build_dataset
    train_set = build_dataset(cfg, "train")   # cfg: the resolved config (data, augment, run)
"""

from ensemble_mde.data.augment import augment_rng, augment_sample, draw_params, warp
from ensemble_mde.data.dataset import (
    DepthDataset,
    build_dataset,
    eigen_crop_default,
    loader_workers,
    open_source,
    scene_split,
    split_records,
)
from ensemble_mde.data.readers import FORMATS, NYU_FOCAL, Record, detect_format, load_depth, load_rgb

__all__ = [
    "DepthDataset", "FORMATS", "NYU_FOCAL", "Record", "augment_rng", "augment_sample", "build_dataset",
    "detect_format", "draw_params", "eigen_crop_default", "load_depth", "loader_workers", "load_rgb", "open_source",
    "scene_split", "split_records", "warp",
]
