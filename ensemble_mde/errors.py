"""Typed errors. Each carries the offending path or key, and its message is one line
that says what is wrong, where, and what to do. The CLI prints it and exits with 2."""

from __future__ import annotations


class EnsembleError(Exception):
    """Base class of every error a user can cause. `where` is a path or config key."""

    def __init__(self, message: str, where: object | None = None):
        self.where = None if where is None else str(where)
        text = message if self.where is None or self.where in message else f"{self.where}: {message}"
        super().__init__(text)


class ConfigError(EnsembleError):
    """Unknown config key, wrong value type, bad override syntax."""


class DataError(EnsembleError):
    """Missing, corrupt or inconsistent dataset files."""


class CheckpointError(EnsembleError):
    """A checkpoint or weights file that cannot be loaded or does not fit the model."""


class ModelError(EnsembleError):
    """Unknown learner name, bad model arguments, unsupported input size."""
