"""NYU Depth V2 data: readers for the DenseDepth, BTS and labeled-.mat layouts (and the
synthetic set, written in the DenseDepth layout), the dataset, augmentation, checks.

    from ensemble_mde.data import build_dataset
    train_set = build_dataset(cfg, "train")   # cfg: the resolved config (data, augment, run)
"""

import importlib

# name -> the submodule defining it, imported on first use: `ensemble data synth` (numpy and PIL)
# then starts without torch, which the dataset and augmentation modules import.
_EXPORTS = {
    **dict.fromkeys(("augment_rng", "augment_sample", "draw_params", "warp"), "augment"),
    **dict.fromkeys(("DepthDataset", "build_dataset", "eigen_crop_default", "loader_workers", "open_source"),
                    "dataset"),
    **dict.fromkeys(("held_out_scenes", "scene_folds", "scene_split", "split_records", "training_scenes"), "splits"),
    **dict.fromkeys(("FORMATS", "NYU_FOCAL", "Record", "detect_format", "load_depth", "load_rgb"), "readers"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
