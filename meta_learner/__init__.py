"""The meta-learner: the SG study's weighting network (per-pixel weights over base depths),
the stacked ensemble (freeze / finetune / simultaneous), averaging baselines, and the
base-prediction cache."""

import importlib

# name -> the submodule defining it, imported on first use: the baselines and the cache do not
# need the weighting network's timm (seconds of start-up).
_EXPORTS = {
    **dict.fromkeys(("BASELINES", "ConvexOracleEnsemble", "MeanEnsemble", "MedianEnsemble", "OracleEnsemble",
                     "WeightedEnsemble"), "baselines"),
    **dict.fromkeys(("CachedMetaDataset", "PredictionCache", "cache_key", "data_identity"), "cache"),
    **dict.fromkeys(("MODES", "StackedEnsemble", "blend"), "ensemble"),
    **dict.fromkeys(("WeightingNetwork", "build_weighting"), "weighting"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
