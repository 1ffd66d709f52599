"""Readers for the NYU Depth V2 layouts and KITTI of docs/design.md §3: image decoding, file
access in a folder or straight from a zip, list/CSV parsing, the labeled .mat, and format
detection.

Every problem a user's files can cause is a DataError whose message names the file.
Handles on zip and HDF5 files are opened lazily once per process (checked by pid): they
are not fork-safe, and DataLoader workers are forked from the process that built the
dataset.
"""

from __future__ import annotations

import csv
import io
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ensemble_mde.errors import ConfigError, DataError

NYU_FOCAL = 518.8579  # fx in pixels of the 640x480 NYU Depth V2 frames (fy 519.4696)
NYU_WIDTH = 640
FORMATS = ("densedepth", "bts", "kitti", "nyu_labeled")
SYNTHETIC_MARKER = "synthetic.json"  # written by `ensemble data synth` at the dataset root
DENSEDEPTH_CSV = {"train": "data/nyu2_train.csv", "val": "data/nyu2_val.csv", "test": "data/nyu2_test.csv"}
MAT_SUFFIXES = (".mat", ".h5", ".hdf5")
LIST_KEYWORDS = ("train", "test")
KITTI_DRIVE = re.compile(r"\d{4}_\d{2}_\d{2}_drive_\d{4}_sync")  # a KITTI raw-data drive folder


@dataclass(frozen=True)
class Record:
    """One frame of a split.

    name: unique id (image path without extension, or the labeled frame number);
    rgb/depth: keys the dataset's store reads (absolute path, zip entry, or
    "<h5 dataset>/<0-based frame>" for the labeled .mat); focal: fx in pixels at the
    stored resolution, or None for the NYU focal scaled to the frame width.
    """

    name: str
    scene: str
    rgb: str
    depth: str
    focal: float | None = None


def one_line(error: BaseException, limit: int = 160) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:limit]


# --------------------------------------------------------------------------- images

def _image_bytes(source: str | Path | bytes, where: str | None) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), where or "<image bytes>"
    path = Path(source)
    if not path.is_file():
        raise DataError("file not found", where or path)
    return path.read_bytes(), where or str(path)


def decode_image(data: bytes, where: str) -> Image.Image:
    """Fully decoded PIL image; a corrupt or truncated file is a DataError naming `where`."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise DataError("not a readable image (corrupt or unknown header)", where) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"corrupt or truncated image ({one_line(e)})", where) from None
    return image


def load_rgb(source: str | Path | bytes, where: str | None = None, upright: bool = False) -> torch.Tensor:
    """Image file (path or bytes) -> float32 [3,H,W] in [0,1]; grey, palette and RGBA
    images are converted to RGB. upright: turned as its EXIF orientation says (a phone photo
    stores its pixels sideways and that tag; dataset frames are read as stored, like their
    depth maps). `where` names the file in errors."""
    data, where = _image_bytes(source, where)
    image = decode_image(data, where)
    if upright:
        image = ImageOps.exif_transpose(image)
    image = image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def read_depth_png(source: str | Path | bytes, where: str | None = None,
                   units_per_metre: float = 1000.0) -> tuple[np.ndarray, int]:
    """Depth image -> (float32 [H,W] metres, bit depth). The PNG's bit depth decides the
    encoding, not the split: 16-bit = value / units_per_metre (NYU: millimetres, 1000; KITTI:
    256), 8-bit = v/255*10 m (DenseDepth's train set). 0 stays 0 (no depth)."""
    data, where = _image_bytes(source, where)
    image = decode_image(data, where)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(image, dtype=np.float32) / float(units_per_metre), 16
    if image.mode == "L":
        return np.asarray(image, dtype=np.float32) * (10.0 / 255.0), 8
    raise DataError(f"depth image must be single-channel 8- or 16-bit, got PIL mode {image.mode}", where)


def load_depth(source: str | Path | bytes, where: str | None = None) -> torch.Tensor:
    """Depth PNG (path or bytes) -> float32 [1,H,W] metres, 0 = no depth."""
    depth, _ = read_depth_png(source, where)
    return torch.from_numpy(depth)[None]


# --------------------------------------------------------------------------- file stores

class FolderStore:
    """Files on disk; keys are absolute paths."""

    def read(self, key: str) -> bytes:
        try:
            return Path(key).read_bytes()
        except FileNotFoundError:
            raise DataError("file not found", key) from None
        except OSError as e:
            raise DataError(f"cannot read file ({one_line(e)})", key) from None

    def exists(self, key: str) -> bool:
        return os.path.isfile(key)

    def where(self, key: str) -> str:
        return key


class ZipStore:
    """Entries of a zip read in place (no extraction); keys are entry names. The handle
    is opened lazily in each process."""

    def __init__(self, zip_path: Path):
        self.zip_path = Path(zip_path)
        self._zip: zipfile.ZipFile | None = None
        self._pid: int | None = None
        self.names = frozenset(self._handle().namelist())

    def _handle(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            try:
                self._zip = zipfile.ZipFile(self.zip_path)
            except FileNotFoundError:
                raise DataError("file not found", self.zip_path) from None
            except (zipfile.BadZipFile, OSError) as e:
                raise DataError(f"not a readable zip file ({one_line(e)})", self.zip_path) from None
            self._pid = os.getpid()
        return self._zip

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None, "_pid": None}

    def read(self, key: str) -> bytes:
        if key not in self.names:
            raise DataError("file not found in the zip", self.where(key))
        try:
            return self._handle().read(key)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DataError(f"corrupt zip entry ({one_line(e)})", self.where(key)) from None

    def exists(self, key: str) -> bool:
        return key in self.names

    def where(self, key: str) -> str:
        return f"{self.zip_path}/{key}"


class LabeledMat:
    """`nyu_depth_v2_labeled.mat` (MATLAB v7.3 = HDF5) read lazily with h5py.

    h5py sees MATLAB's column-major arrays with reversed axes: `images` (N,3,W,H) uint8,
    `depths`/`rawDepths` (N,W,H) float metres; frames are transposed to [3,H,W] / [H,W].
    Keys are "<dataset>/<0-based frame>".
    """

    DATASETS = {"images": 4, "depths": 3, "rawDepths": 3}

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = None
        self._pid: int | None = None
        f = self._handle()
        for name, rank in self.DATASETS.items():
            if name not in f or len(f[name].shape) != rank:
                raise DataError(f"no {rank}-D dataset {name!r}: not the NYU labeled .mat", self.path)
        self.frames = int(f["images"].shape[0])

    def _handle(self):
        import h5py

        if self._file is None or self._pid != os.getpid():
            if not self.path.is_file():
                raise DataError("file not found", self.path)
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as e:
                raise DataError(f"not an HDF5 (MATLAB v7.3) file ({one_line(e)})", self.path) from None
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": None}

    def frame(self, key: str) -> np.ndarray:
        """"images/3" -> uint8 [3,H,W]; "depths/3" -> float32 [H,W] metres."""
        dataset, index = key.rsplit("/", 1)
        try:
            array = self._handle()[dataset][int(index)]
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"cannot read {key} ({one_line(e)})", self.path) from None
        return np.ascontiguousarray(np.swapaxes(array, -1, -2))

    def scenes(self) -> list[str] | None:
        """Scene name of every frame from the `scenes` cell array (HDF5 object references
        to uint16 char arrays), or None when the file has no such dataset."""
        f = self._handle()
        if "scenes" not in f:
            return None
        refs = np.asarray(f["scenes"]).ravel()
        return ["".join(map(chr, np.asarray(f[ref]).ravel())) for ref in refs]

    def where(self, key: str) -> str:
        return f"{self.path}:{key}"


# --------------------------------------------------------------------------- lists

def read_csv_pairs(text: str, where: str) -> list[tuple[str, str]]:
    """DenseDepth CSV, no header: one `rgb_path,depth_path` per line (blank lines skipped)."""
    pairs = []
    for n, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if len(cells) != 2 or not all(cells):
            raise DataError(f"line {n}: expected 'rgb_path,depth_path', got {','.join(cells)[:80]!r}", where)
        pairs.append((cells[0], cells[1]))
    return pairs


def _bts_line(line: str) -> tuple[str, str, float] | None:
    parts = line.split()
    if len(parts) != 3:
        return None
    try:
        focal = float(parts[2])
    except ValueError:
        return None
    return parts[0], parts[1], focal


def read_bts_list(path: Path) -> list[tuple[str, str, float]]:
    """BTS/AdaBins list: `<rgb> <depth> <focal>` per line, the paths as listed (BTS writes
    them relative to an image root with a leading slash: see `listed_path`). A UTF-8 byte
    order mark is dropped."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DataError("not a UTF-8 text file", path) from None
    except OSError as e:
        raise DataError(f"cannot read list file ({one_line(e)})", path) from None
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = _bts_line(line)
        if row is None:
            raise DataError(f"line {n}: expected '<rgb> <depth> <focal>', got {line.strip()[:80]!r}", path)
        rows.append(row)
    return rows


def first_list_row(path: Path) -> tuple[str, str, float] | None:
    """The first non-blank line of a .txt file as (rgb, depth, focal) when it has the
    `<rgb> <depth> <focal>` form, else None."""
    if path.suffix.lower() != ".txt" or not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8-sig") as f:
            for line in f:
                if line.strip():
                    return _bts_line(line)
    except (OSError, UnicodeDecodeError):
        return None
    return None


def is_bts_list(path: Path) -> bool:
    """A .txt file whose first non-blank line has the `<rgb> <depth> <focal>` form."""
    return first_list_row(path) is not None


def is_kitti_list(path: Path) -> bool:
    """Such a list whose first image lies in a KITTI raw-data drive folder
    (`2011_09_26/2011_09_26_drive_0002_sync/image_02/data/...`, BTS/AdaBins's Eigen lists)."""
    row = first_list_row(path)
    return row is not None and KITTI_DRIVE.search(row[0]) is not None


def listed_path(root: Path, listed: str) -> str:
    """Where a listed image is: under the image root (BTS lists write `/scene/rgb_1.jpg`
    relative to it), else, for a path that starts with `/` and exists as it is, that absolute
    path; a file in neither place keys to its place under the root."""
    under_root = Path(root) / listed.lstrip("/")
    if listed.startswith("/") and not under_root.is_file() and Path(listed).is_file():
        return listed
    return str(under_root)


def bts_lists_in(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.txt") if is_bts_list(p))


def list_keyword(path: Path) -> str | None:
    """"train" or "test" when exactly one of them is in the file name, else None."""
    found = [k for k in LIST_KEYWORDS if k in Path(path).name.lower()]
    return found[0] if len(found) == 1 else None


def densedepth_root(path: Path) -> Path | None:
    """The folder holding `data/nyu2_*.csv`: `path` itself or, if `path` is that `data`
    folder, its parent; None when neither."""
    for root in (path, path.parent if path.name == "data" else None):
        if root is not None and any((root / rel).is_file() for rel in DENSEDEPTH_CSV.values()):
            return root
    return None


def zip_prefix(names: frozenset[str], zip_path: Path) -> str:
    """Entry prefix of the folder holding `data/nyu2_*.csv` inside a zip ("" or "nyu_data/")."""
    found = sorted((n[: -len(rel)] for n in names for rel in DENSEDEPTH_CSV.values() if n.endswith(rel)),
                   key=len)
    if not found:
        raise DataError("zip holds no data/nyu2_train.csv or data/nyu2_test.csv (DenseDepth layout)", zip_path)
    return found[0]


# --------------------------------------------------------------------------- format

def detect_format(path: str | Path) -> str:
    """Format of the dataset at `path` from what is there: a .zip -> densedepth; a
    .mat/.h5 -> nyu_labeled; a folder with data/nyu2_*.csv -> densedepth; a folder with
    (or a .txt) list of `<rgb> <depth> <focal>` lines -> kitti when its images lie in KITTI
    drive folders, else bts."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such file or folder", path)
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".zip":
        return "densedepth"
    if path.is_file() and suffix in MAT_SUFFIXES:
        return "nyu_labeled"
    if path.is_dir() and densedepth_root(path) is not None:
        return "densedepth"
    lists = [path] if is_bts_list(path) else bts_lists_in(path) if path.is_dir() else []
    if lists:
        return "kitti" if any(is_kitti_list(p) for p in lists) else "bts"
    raise DataError(
        "unknown dataset format: looked for a DenseDepth .zip or folder with data/nyu2_train.csv or "
        "data/nyu2_test.csv (densedepth), list files of '<rgb> <depth> <focal>' lines (bts, or kitti when "
        "the images lie in KITTI drive folders), a .mat/.h5 file (nyu_labeled); set data.format to force one",
        path)


def resolve_format(cfg_data: dict) -> str:
    """data.format, or the detected format when it is `auto`."""
    fmt = cfg_data.get("format", "auto")
    if fmt == "auto":
        return detect_format(cfg_data["path"])
    if fmt not in FORMATS:
        raise ConfigError(f"data.format {fmt!r} is not one of auto, {', '.join(FORMATS)}", "data.format")
    if not Path(cfg_data["path"]).exists():
        raise DataError("no such file or folder", cfg_data["path"])
    return fmt
