"""Which packaged protocol layer a dataset takes, and a config resolved under it.

NYU formats take the defaults' protocol (10 m, Eigen crop); KITTI takes configs/data/kitti.yaml
(80 m, Garg crop, BTS/AdaBins KITTI augmentation) whether or not the user names it, since KITTI
frames under NYU's 10 m cap would train and score on an eighth of their range.
"""
from __future__ import annotations

from typing import Sequence

from ensemble_mde import config as config_mod
from ensemble_mde.data.readers import resolve_format
from ensemble_mde.errors import DataError

# format -> packaged layer (configs/<layer>.yaml) of its protocol, for formats not NYU's.
PROTOCOL_LAYERS = {"kitti": "data/kitti"}
# the data keys that say how a dataset is scored (valid GT range, prediction clip, crop)
SCORING_KEYS = ("min_depth", "max_depth", "eigen_crop")


def protocol_layer(cfg_data: dict) -> str | None:
    """The packaged layer of the protocol of the dataset `cfg_data` names ("data/kitti"), or
    None: an NYU format, no path (a meta run on its bases' data), or a path that is not there
    (reading it will say so)."""
    if cfg_data.get("path") is None:
        return None
    try:
        return PROTOCOL_LAYERS.get(resolve_format(cfg_data))
    except DataError:
        return None


def load_config_for_data(packaged: Sequence[str], *args, **kwargs) -> dict:
    """config.load_config(packaged, *args, **kwargs) with the protocol layer of the data it
    resolves to after `packaged` (config.load_config's `protocol`), under the preset, the
    user's file and --set: those name the data, so the layer is known only once they are read."""
    cfg = config_mod.load_config(packaged, *args, **kwargs)
    layer = protocol_layer(cfg["data"])
    if layer is None:
        return cfg
    return config_mod.load_config(packaged, *args, protocol=layer, **kwargs)


def scoring_protocol(layer: str | None) -> dict:
    """The scoring keys (SCORING_KEYS) of a protocol: the defaults' (NYU: 1e-3-10 m, Eigen crop
    on real NYU GT) with the data section of `layer` (from protocol_layer) over them."""
    data = config_mod.load_config(["defaults"], protocol=layer)["data"]
    return {key: data[key] for key in SCORING_KEYS}
