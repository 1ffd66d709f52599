"""File helpers: atomic writes (never a half-written file), JSON files and logs that may be
damaged, safe checkpoint loading, and exclusive locks on folders two processes must not share."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ensemble_mde.errors import CheckpointError, DataError, EnsembleError

if TYPE_CHECKING:  # torch is imported by the two functions that need it: `data synth` writes no tensors
    import torch


def file_mode() -> int:
    """The permissions a new file gets under the process's umask (0o644 under umask 022)."""
    mask = os.umask(0o022)  # the only way to read the umask is to set it; put it back at once
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_with(path: Path, write) -> None:
    """Call write(binary file) on a temp file beside `path`, fsync, then rename it over `path`.
    The file gets the permissions of any new file under the umask (a temp file starts at 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
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
    import torch

    atomic_write_with(Path(path), lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | Path) -> None:
    atomic_write_with(Path(path), lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(obj: Any, path: str | Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


REWRITE_ADVICE = "delete it and rerun the command that wrote it (training: the same command with --resume)"


def read_json(path: str | Path) -> Any:
    """The value in a JSON file; a DataError naming the file when it is empty, truncated or
    not UTF-8 (such files are written atomically, so damage came from outside)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"not valid JSON (empty, truncated or damaged); {REWRITE_ADVICE}", path) from None


def read_jsonl(path: str | Path, accept=None) -> tuple[list[dict], list[int]]:
    """(records, numbers of the lines skipped) of a JSON-lines log. A line that is not a JSON
    object (the half-written last line of a process that died, junk bytes), or one that
    `accept(record)` refuses, is skipped."""
    records, skipped = [], []
    for number, raw in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if isinstance(record, dict) and (accept is None or accept(record)):
            records.append(record)
        else:
            skipped.append(number)
    return records, skipped


def _checkpoint_problem(path: Path, error: Exception) -> str:
    """What is wrong with a checkpoint torch.load refused, in words a user can act on."""
    if path.stat().st_size == 0:
        return "the file is empty"
    if isinstance(error, pickle.UnpicklingError):
        return ("it holds Python objects besides tensors and plain data, which could run code when loaded; "
                "only weights are loaded (torch.load weights_only=True)")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK") or head[:1] == b"\x80":  # a PyTorch zip archive, or a legacy pickle
        return "the file is truncated or damaged (an interrupted copy or write?); copy it again or use another"
    return "not a PyTorch checkpoint"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with weights_only=True: a checkpoint can never run code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, not a checkpoint at all
        raise CheckpointError(f"cannot load checkpoint: {_checkpoint_problem(path, e)}", path) from None


@contextmanager
def exclusive_lock(path: str | Path, what: str, advice: str) -> Iterator[None]:
    """Hold an exclusive advisory lock (fcntl.flock) on the file `path`, which holds this
    process's id, while the block runs; the OS releases it when the process dies, however it
    dies. If another process holds it: an EnsembleError "<what> is in use by process <pid>;
    <advice>" (`what` should name the folder the lock file is in). The file is removed on
    release."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise EnsembleError(f"{what} is in use by process {holder}; {advice}", path.parent) from None
        try:  # the previous holder may have removed the file between our open and our lock
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before unlocking, so a process that opened it sees it is gone
        os.close(fd)


def distinct_stems(paths: list[str | Path]) -> list[str]:
    """A stem for the output files of each input path, no two alike (ignoring case, as some
    file systems do): the stem (`kitchen`); where stems clash, the name with its extension
    (`kitchen_png`, `kitchen_jpg`), then with as many parent folders as it takes
    (`a_kitchen_jpg`); the same file given twice is numbered (`kitchen_2`)."""
    resolved = [Path(os.path.abspath(p)) for p in paths]
    folders = [[part for part in p.parent.parts if part != p.anchor] for p in resolved]
    levels = [0] * len(paths)

    def stem(i: int) -> str:
        if levels[i] == 0:
            return resolved[i].stem
        return "_".join([*folders[i][len(folders[i]) - levels[i] + 1:], resolved[i].name.replace(".", "_")])

    while True:
        stems = [stem(i) for i in range(len(paths))]
        clashes: dict[str, list[int]] = {}
        for i, s in enumerate(stems):
            clashes.setdefault(s.casefold(), []).append(i)
        grow = [i for group in clashes.values() if len({str(resolved[j]).casefold() for j in group}) > 1
                for i in group if levels[i] <= len(folders[i])]  # one file twice: no name tells it apart
        if not grow:
            break
        for i in grow:
            levels[i] += 1
    out, seen = [], {}
    for s in stems:
        seen[s.casefold()] = seen.get(s.casefold(), 0) + 1
        out.append(s if seen[s.casefold()] == 1 else f"{s}_{seen[s.casefold()]}")
    return out


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (identifies a base checkpoint in caches and meta runs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
