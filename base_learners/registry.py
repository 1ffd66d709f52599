"""The learner registry: `create(name, **cfg)`, `available()`, `register(name)`.

Each model family file registers its constructors:

    @register("adabins")
    def adabins(**cfg) -> DepthLearner: ...

FAMILIES says which file registers each name; a file is imported when one of its learners
is first created, so a command loads only the families it builds (METER needs neither timm
nor torchvision, which the GhostNet learners import: seconds of start-up).
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable

from ensemble_mde.errors import ModelError

FAMILIES = {"adabins": "base_learners.adabins", "bts": "base_learners.bts", "ldrn": "base_learners.ldrn",
            "meter_xxs": "base_learners.meter", "meter_xs": "base_learners.meter", "meter_s": "base_learners.meter"}
_REGISTRY: dict[str, Callable] = {}


def register(name: str) -> Callable[[Callable], Callable]:
    def add(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"learner {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return add


def available() -> list[str]:
    return sorted(set(FAMILIES) | set(_REGISTRY))


def create(name: str, **cfg):
    """Build a registered learner; unknown names and arguments are a ModelError."""
    if name not in _REGISTRY and name in FAMILIES:
        importlib.import_module(FAMILIES[name])
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, available(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; available: {', '.join(available())}"
        raise ModelError(f"unknown learner {name!r}{hint}", name)
    try:
        return _REGISTRY[name](**cfg)
    except TypeError as e:
        raise ModelError(f"bad arguments for learner {name!r}: {e}", name) from None
