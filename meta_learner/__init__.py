"""The meta-learner: the SG study's weighting network (per-pixel weights over base depths),
the stacked ensemble (freeze / finetune / simultaneous), averaging baselines, and the
base-prediction cache."""

from meta_learner.baselines import (BASELINES, MeanEnsemble, MedianEnsemble, OracleEnsemble,
                                    WeightedEnsemble)
from meta_learner.cache import CachedMetaDataset, PredictionCache, cache_key, data_identity
from meta_learner.ensemble import MODES, StackedEnsemble, blend
from meta_learner.weighting import WeightingNetwork, build_weighting

__all__ = [
    "BASELINES", "MODES", "CachedMetaDataset", "MeanEnsemble", "MedianEnsemble", "OracleEnsemble",
    "PredictionCache", "StackedEnsemble", "WeightedEnsemble", "WeightingNetwork", "blend", "build_weighting",
    "cache_key", "data_identity",
]
