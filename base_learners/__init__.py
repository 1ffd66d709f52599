"""The model zoo: `create(name, **cfg)`, `available()` (families load on first use: registry.FAMILIES)."""

from base_learners.registry import available, create, register

__all__ = ["available", "create", "register"]
