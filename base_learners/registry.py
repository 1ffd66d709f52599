"""The learner registry: `create(name, **cfg)`, `available()`, `register(name)`.

Each model family file registers its constructors:

    @register("adabins")
    def adabins(**cfg) -> DepthLearner: ...
"""

from __future__ import annotations

import difflib
from typing import Callable

from ensemble_mde.errors import ModelError

_REGISTRY: dict[str, Callable] = {}


def register(name: str) -> Callable[[Callable], Callable]:
    def add(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"learner {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return add


def available() -> list[str]:
    return sorted(_REGISTRY)


def create(name: str, **cfg):
    """Build a registered learner; unknown names and arguments are a ModelError."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, available(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; available: {', '.join(available())}"
        raise ModelError(f"unknown learner {name!r}{hint}", name)
    try:
        return _REGISTRY[name](**cfg)
    except TypeError as e:
        raise ModelError(f"bad arguments for learner {name!r}: {e}", name) from None
