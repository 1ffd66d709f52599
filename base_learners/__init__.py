"""The model zoo: `create(name, **cfg)`, `available()`."""

from base_learners.registry import available, create, register

__all__ = ["available", "create", "register"]
