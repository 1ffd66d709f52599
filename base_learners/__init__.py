"""The model zoo: `create(name, **cfg)`, `available()`."""

from base_learners.registry import available, create, register
from base_learners import adabins, bts, ldrn  # noqa: F401  (registers)
from base_learners import meter  # noqa: F401  (registers)

__all__ = ["available", "create", "register"]
