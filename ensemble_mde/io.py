"""File helpers: atomic writes (never a half-written file) and safe checkpoint loading."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ensemble_mde.errors import CheckpointError


def atomic_write_with(path: Path, write) -> None:
    """Call write(binary file) on a temp file beside `path`, fsync, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, then rename over `path`."""
    atomic_write_with(Path(path), lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | Path) -> None:
    atomic_write_with(Path(path), lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(obj: Any, path: str | Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with weights_only=True: a checkpoint can never run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, not a checkpoint at all
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load checkpoint ({first[:160]})", path) from None


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (identifies a base checkpoint in caches and meta runs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
