"""The meta-learner: U-Net per-pixel weights over base depths, the stacked ensemble
(freeze / finetune / simultaneous), averaging baselines, and the base-prediction cache."""

from meta_learner.baselines import (BASELINES, ConvexOracleEnsemble, MeanEnsemble, MedianEnsemble, OracleEnsemble,
                                    WeightedEnsemble)
from meta_learner.cache import CachedMetaDataset, PredictionCache, cache_key, data_identity
from meta_learner.ensemble import MODES, StackedEnsemble, blend
from meta_learner.unet import WeightingUNet

__all__ = [
    "BASELINES", "MODES", "CachedMetaDataset", "ConvexOracleEnsemble", "MeanEnsemble", "MedianEnsemble", "OracleEnsemble",
    "PredictionCache", "StackedEnsemble", "WeightedEnsemble", "WeightingUNet", "blend", "cache_key",
    "data_identity",
]
