"""File helpers: atomic writes (never a half-written file), JSON files and logs that may be
damaged, safe checkpoint loading, and exclusive locks on folders two processes must not share."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import re
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

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


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive (PyTorch >= 1.6)
LEGACY_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # the pickled magic number that opens torch.save's older format
DAMAGED = "the file is truncated or damaged (an interrupted copy or write?); copy it again or use another"
NEWER_TORCH = re.compile(r"version (\d+), but the maximum supported version for reading is (\d+)")


def _damaged_member(archive: zipfile.ZipFile) -> str | None:
    """The first member of a zip checkpoint whose bytes do not match their stored CRC-32
    (torch.load does not check them: a flipped bit would load as a wrong weight), or None.
    Members saved without a checksum (CRC 0: torch.serialization.set_crc32_options(False))
    are not checked. Reads the whole file (0.1 s per 50 MB)."""
    for info in archive.infolist():
        if info.CRC:
            try:
                with archive.open(info) as member:
                    while member.read(1 << 20):
                        pass
            except (zipfile.BadZipFile, zlib.error, EOFError):
                return info.filename
    return None


def _file_problem(path: Path) -> str | None:
    """What keeps the file from being a whole PyTorch checkpoint, told from its bytes before
    torch.load reads it (torch's own messages are pages long), or None."""
    if path.stat().st_size == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        head = f.read(32)
    if not head.startswith(ZIP_MAGIC):
        return None if head.startswith(b"\x80") and LEGACY_MAGIC in head else "not a PyTorch checkpoint"
    if not zipfile.is_zipfile(path):  # no zip directory at its end: cut short
        return DAMAGED
    with zipfile.ZipFile(path) as archive:
        if not any(name.endswith("/data.pkl") for name in archive.namelist()):
            return "not a PyTorch checkpoint (a zip archive of other files)"
        return DAMAGED if _damaged_member(archive) else None


def _load_problem(error: Exception) -> str:
    """What is wrong with a PyTorch checkpoint that torch.load refused, in words a user can act on."""
    newer = NEWER_TORCH.search(str(error))
    if newer:
        import torch

        return (f"saved by a newer PyTorch (file format version {newer[1]}; torch {torch.__version__} reads up "
                f"to {newer[2]}); upgrade PyTorch to load it")
    if isinstance(error, pickle.UnpicklingError) and "Unsupported operand" not in str(error):
        return ("it holds Python objects besides tensors and plain data, which could run code when loaded; "
                "only weights are loaded (torch.load weights_only=True)")
    return DAMAGED


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with weights_only=True: a checkpoint can never run code. A damaged
    one (a checksum that does not match) is refused rather than loaded with wrong weights."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path)
    problem = _file_problem(path)
    if problem is None:
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # a newer format, a pickle with code, a damaged legacy file
            problem = _load_problem(e)
    raise CheckpointError(f"cannot load checkpoint: {problem}", path)


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


def distinct_stems(paths: list[str | Path], taken: Callable[[str | Path, str], bool] | None = None) -> list[str]:
    """A stem for the output files of each input path, no two alike (ignoring case, as some
    file systems do): the stem (`kitchen`); where stems clash, or `taken(path, stem)` says a
    stem is not free for that path (a file of that name exists), the name with its extension
    (`kitchen_png`, `kitchen_jpg`), then with as many parent folders as it takes
    (`a_kitchen_jpg`); the same file given twice, or a name no folder frees, is numbered
    (`kitchen_2`)."""
    taken = taken or (lambda path, stem: False)
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
        grow = {i for group in clashes.values() if len({str(resolved[j]).casefold() for j in group}) > 1
                for i in group}  # one file twice: no name tells it apart
        grow |= {i for i in range(len(paths)) if taken(paths[i], stems[i])}
        grow = {i for i in grow if levels[i] <= len(folders[i])}
        if not grow:
            break
        for i in grow:
            levels[i] += 1
    reserved, used, out = {s.casefold() for s in stems}, set(), []
    for path, s in zip(paths, stems):
        name, n = s, 1
        while name.casefold() in used or taken(path, name) or (n > 1 and name.casefold() in reserved):
            n += 1
            name = f"{s}_{n}"
        used.add(name.casefold())
        out.append(name)
    return out


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (identifies a base checkpoint in caches and meta runs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
