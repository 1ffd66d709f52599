"""The dataset every learner trains and is evaluated on, whatever the file format.

    train_set = build_dataset(cfg, "train")            # augmented (cfg["augment"])
    val_set = build_dataset(cfg, "val")                # scene-disjoint, carved from train
    sample = train_set[0]  # rgb [3,H,W] in [0,1], depth [1,H,W] m (0 = invalid), name, scene, focal, index

A source per format (DenseDepth CSVs in a folder or zip, BTS list files, KITTI's
(data/kitti.py), the labeled .mat) lists the records of each split and loads a frame;
`DepthDataset` validates the frame, resizes it to `data.size` and augments it.
"""

from __future__ import annotations

import hashlib
import posixpath
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ensemble_mde.data import kitti, readers
from ensemble_mde.data.augment import augment_rng, augment_sample
from ensemble_mde.data.readers import NYU_FOCAL, NYU_WIDTH, Record
from ensemble_mde.data.splits import repeated_frames, split_records
from ensemble_mde.data.synth import usable_cpus
from ensemble_mde.errors import ConfigError, DataError
from ensemble_mde.evaluation import resize_rgb

LABELED_FRAMES = 1449
LABELED_SCENE_BLOCK = 10  # frames per pseudo-scene when the .mat has no `scenes` dataset


# --------------------------------------------------------------------------- sources

class ImagePairSource:
    """Sources whose frames are an RGB image file and a depth PNG in `self.store`."""

    real_scenes = True  # scene names come from the files (see LabeledSource for pseudo-scenes)

    def present(self, record: Record) -> bool:
        return self.store.exists(record.rgb) and self.store.exists(record.depth)

    def missing(self, records: list[Record]) -> list[str]:
        """The files of `records` that do not exist, as shown to the user."""
        return [self.where_missing(k) for r in records for k in (r.rgb, r.depth) if not self.store.exists(k)]

    def where_missing(self, key: str) -> str:
        return self.store.where(key)

    def load(self, record: Record) -> tuple[torch.Tensor, np.ndarray, str]:
        rgb = readers.load_rgb(self.store.read(record.rgb), self.store.where(record.rgb))
        depth, bits = readers.read_depth_png(self.store.read(record.depth), self.store.where(record.depth))
        return rgb, depth, "16-bit PNG, mm" if bits == 16 else "8-bit PNG, v/255*10 m"

    def where(self, key: str) -> str:
        return self.store.where(key)


class DenseDepthSource(ImagePairSource):
    """DenseDepth/Kaggle `nyu_data` layout, unpacked or as the zip: `data/nyu2_{train,test}.csv`
    (no header, `rgb,depth` relative to the folder holding `data/`), plus `data/nyu2_val.csv`
    when the dataset brings its own validation split (synthetic data does)."""

    format = "densedepth"

    def __init__(self, path: Path):
        path = Path(path)
        if path.is_file():
            self.store = readers.ZipStore(path)
            self.prefix = readers.zip_prefix(self.store.names, path)
            self.root = str(path)
        else:
            root = readers.densedepth_root(path)
            if root is None:
                raise DataError("no data/nyu2_train.csv or data/nyu2_test.csv (DenseDepth layout)", path)
            self.store = readers.FolderStore()
            self.prefix = str(root) + "/"
            self.root = str(root)
        self.is_synthetic = self.store.exists(self._key(readers.SYNTHETIC_MARKER))

    def _key(self, listed: str) -> str:
        """The store key of a listed path: relative to the folder holding `data/`, or on disk an
        absolute path as it is; normalised (`./a//b` is `a/b`) so that one file has one key."""
        listed = posixpath.normpath(listed.replace("\\", "/"))
        if listed.startswith("/") and isinstance(self.store, readers.FolderStore):
            return listed
        return self.prefix + listed.lstrip("/")

    def listing(self, split: str) -> str:
        """The CSV that lists `split` (for a validation split carved from train, the train CSV)."""
        if split == "val" and not self.has("val"):
            split = "train"
        return self.store.where(self._key(readers.DENSEDEPTH_CSV[split]))

    def has(self, split: str) -> bool:
        return self.store.exists(self._key(readers.DENSEDEPTH_CSV[split]))

    def identity(self) -> list[bytes]:
        """The bytes that identify this dataset's contents: its CSVs and synthetic marker."""
        keys = [self._key(rel) for rel in (*readers.DENSEDEPTH_CSV.values(), readers.SYNTHETIC_MARKER)]
        return [key.encode("utf-8") + b"\0" + self.store.read(key) for key in keys if self.store.exists(key)]

    def records(self, split: str) -> list[Record]:
        if not self.has(split):
            raise DataError(f"no {split} split: {readers.DENSEDEPTH_CSV[split]} is missing", self.root)
        key = self._key(readers.DENSEDEPTH_CSV[split])
        try:
            text = self.store.read(key).decode("utf-8-sig")  # a byte order mark is not part of a path
        except UnicodeDecodeError:
            raise DataError("not a UTF-8 text file", self.store.where(key)) from None
        out = []
        for rgb, depth in readers.read_csv_pairs(text, self.store.where(key)):
            rgb_key = self._key(rgb)
            stem = rgb_key.removeprefix(self.prefix).rsplit(".", 1)[0]  # as listed relative to the root
            name = stem[len("data/"):] if stem.startswith("data/") else stem
            out.append(Record(name=name, scene=densedepth_scene(rgb), rgb=rgb_key, depth=self._key(depth)))
        return out


def densedepth_scene(rgb_path: str) -> str:
    """`data/nyu2_train/<scene>_out/<n>.jpg` -> scene; files directly in `nyu2_test/` -> "test"."""
    folder = Path(rgb_path.replace("\\", "/")).parent.name
    if folder.endswith("_out"):
        return folder[: -len("_out")]
    return "test" if folder == "nyu2_test" else folder


class BtsSource(ImagePairSource):
    """BTS/AdaBins list files (`<rgb> <depth> <focal>` lines). `data.path` is a list file or
    a folder holding them (train/test picked by the name; data.train_list/test_list
    override). Image paths are relative to data.train_root/test_root when set, else to
    the list file's folder, else to data.path (the first that holds the list's first image);
    depth paths to data.train_depth_root/test_depth_root when set (BTS's gt_path), else to
    the image root."""

    format = "bts"
    is_synthetic = False

    def __init__(self, cfg_data: dict):
        self.path = Path(cfg_data["path"])
        self.cfg = cfg_data
        self.root = str(self.path)
        self.store = readers.FolderStore()
        self._listed: dict[str, str] = {}  # key -> the path as listed, for paths listed with a leading "/"

    def _list(self, split: str) -> Path:
        key = "test" if split == "test" else "train"
        configured = self.cfg.get(f"{key}_list")
        if configured:
            if not Path(configured).is_file():
                raise DataError(f"data.{key}_list not found", configured)
            return Path(configured)
        if self.path.is_file() and readers.list_keyword(self.path) in (key, None):
            return self.path
        folder = self.path.parent if self.path.is_file() else self.path
        named = sorted(p for p in folder.glob("*.txt") if p.is_file() and readers.list_keyword(p) == key)
        # A lone *train*.txt that is no list (empty, binary, other columns) is still the list the
        # user meant: reading it says what is wrong, where skipping it would drop the split unsaid.
        found = [p for p in named if readers.is_bts_list(p)] or named
        if len(found) == 1:
            return found[0]
        what = f"{len(found)} {key} list files" if found else f"no {key} list file"
        raise DataError(f"no {split} split: {what} (*{key}*.txt of '<rgb> <depth> <focal>' lines) here; "
                        f"set data.{key}_list", folder)

    def listing(self, split: str) -> str:
        return str(self._list(split))

    def has(self, split: str) -> bool:
        """Train and test have list files; validation is always carved from train."""
        if split == "val":
            return False
        try:
            self._list(split)
        except DataError:
            return False
        return True

    def identity(self) -> list[bytes]:
        """The bytes that identify this dataset's contents: its list files."""
        lists = [self._list(split) for split in ("train", "test") if self.has(split)]
        return [str(p).encode("utf-8") + b"\0" + p.read_bytes() for p in lists]

    def _root(self, key: str, split: str, candidates: list[Path], first: str | None) -> Path:
        """data.<train|test>_<key> when set, else the first of `candidates` that holds `first`
        (the list's first path of that column), else the first candidate."""
        configured = self.cfg.get(f"{'test' if split == 'test' else 'train'}_{key}")  # .get: configs of older runs
        if configured:
            return Path(configured)
        for root in candidates:
            if first is not None and (root / first.lstrip("/")).is_file():
                return root
        return candidates[0]

    def depth_roots(self, image_root: Path) -> list[Path]:
        """Where the depth paths may be relative to, in the order tried."""
        return [image_root]

    def rows(self, list_file: Path) -> list[tuple[str, str, float]]:
        """The (rgb, depth, focal) lines of a split's list file."""
        return readers.read_bts_list(list_file)

    def scene(self, rgb: str) -> str:
        """The scene of a listed image: its folder (`/bookstore_0001d/rgb_00001.jpg`)."""
        return Path(rgb).parent.name or rgb

    def records(self, split: str) -> list[Record]:
        list_file = self._list(split)
        rows = self.rows(list_file)
        first_rgb, first_depth = (rows[0][0], rows[0][1]) if rows else (None, None)
        root = self._root("root", split, [list_file.parent] + ([self.path] if self.path.is_dir() else []), first_rgb)
        depth_root = self._root("depth_root", split, self.depth_roots(root), first_depth)
        out = []
        for rgb, depth, focal in rows:
            keys = [readers.listed_path(root, rgb), readers.listed_path(depth_root, depth)]
            for key, listed in zip(keys, (rgb, depth)):
                if listed.startswith("/"):
                    self._listed[key] = listed
            rel = rgb.lstrip("/")
            out.append(Record(name=rel.rsplit(".", 1)[0], scene=self.scene(rel), rgb=keys[0], depth=keys[1],
                              focal=focal))
        return out

    def where_missing(self, key: str) -> str:
        listed = self._listed.get(key)
        return key if listed is None else f"{listed} (looked for as listed and as {key})"


class KittiSource(BtsSource):
    """BTS/AdaBins KITTI list files (data/kitti.py): lines without ground truth skipped,
    drives as scenes, depth / 256, frames kb-cropped; roots as for BtsSource, the depth root
    tried under the image root's data_depth_annotated/ first."""

    format = "kitti"

    def rows(self, list_file: Path) -> list[tuple[str, str, float]]:
        return [row for row in readers.read_bts_list(list_file) if row[1] != kitti.NO_DEPTH]

    def depth_roots(self, image_root: Path) -> list[Path]:
        return [image_root / kitti.DEPTH_ROOT, image_root]

    def scene(self, rgb: str) -> str:
        return kitti.kitti_scene(rgb)

    def load(self, record: Record) -> tuple[torch.Tensor, np.ndarray, str]:
        rgb_where, depth_where = self.store.where(record.rgb), self.store.where(record.depth)
        rgb = readers.load_rgb(self.store.read(record.rgb), rgb_where)
        depth, bits = readers.read_depth_png(self.store.read(record.depth), depth_where,
                                             units_per_metre=kitti.KITTI_DEPTH_SCALE)
        if bits != 16:
            raise DataError("KITTI depth must be a 16-bit PNG (metres x 256)", depth_where)
        if tuple(depth.shape) == tuple(rgb.shape[-2:]):  # a mismatched pair is left to the dataset's size check
            rgb, depth = kitti.kb_crop(rgb, depth, rgb_where)
        return rgb, depth, "16-bit PNG, m x 256"


class LabeledSource:
    """`nyu_depth_v2_labeled.mat` with the official 795/654 split (1-based frame numbers
    shipped as nyu_labeled_{train,test}.txt, read from NYU's splits.mat). Train/val GT is
    `depths` (in-painted), test GT `rawDepths` (holes = 0).

    Scenes come from the file's `scenes` cell array. A file without it falls back to
    pseudo-scenes of LABELED_SCENE_BLOCK consecutive frame numbers (NYU stores a scene's
    frames consecutively, so a real scene straddles at most two blocks)."""

    format = "nyu_labeled"
    is_synthetic = False

    def __init__(self, path: Path):
        self.mat = readers.LabeledMat(path)
        self.root = str(path)
        if self.mat.frames != LABELED_FRAMES:
            raise DataError(f"has {plural(self.mat.frames, 'frame')}; the official NYU split needs {LABELED_FRAMES}",
                            path)
        self._scenes = self.mat.scenes()
        self.real_scenes = self._scenes is not None

    def listing(self, split: str) -> str:
        return f"nyu_labeled_{'test' if split == 'test' else 'train'}.txt (packaged official split)"

    def identity(self) -> list[bytes]:
        """What identifies the .mat without reading its 2.8 GB: its size and modification time."""
        stat = Path(self.root).stat()
        return [f"{stat.st_size}:{stat.st_mtime_ns}".encode("ascii")]

    def has(self, split: str) -> bool:
        return split in ("train", "test")

    def records(self, split: str) -> list[Record]:
        if not self.has(split):
            raise DataError(f"no separate {split} split in the labeled .mat", self.root)
        text = resources.files("ensemble_mde.data").joinpath(f"nyu_labeled_{split}.txt").read_text()
        depth_set = "rawDepths" if split == "test" else "depths"
        out = []
        for number in (int(v) for v in text.split()):
            i = number - 1
            if self._scenes is not None:
                scene = self._scenes[i]
            else:
                start = (i // LABELED_SCENE_BLOCK) * LABELED_SCENE_BLOCK + 1
                scene = f"frames_{start:04d}-{start + LABELED_SCENE_BLOCK - 1:04d}"
            out.append(Record(name=f"{number:04d}", scene=scene, rgb=f"images/{i}", depth=f"{depth_set}/{i}"))
        return out

    def present(self, record: Record) -> bool:
        return True

    def missing(self, records: list[Record]) -> list[str]:
        return []

    def load(self, record: Record) -> tuple[torch.Tensor, np.ndarray, str]:
        rgb = torch.from_numpy(self.mat.frame(record.rgb)).float().div_(255.0)
        depth = self.mat.frame(record.depth).astype(np.float32)
        return rgb, depth, f"float metres ({record.depth.split('/')[0]})"

    def where(self, key: str) -> str:
        return self.mat.where(key)


def open_source(cfg_data: dict):
    """The source for data.path in data.format (detected when `auto`)."""
    fmt = readers.resolve_format(cfg_data)
    path = Path(cfg_data["path"])
    if fmt == "densedepth":
        return DenseDepthSource(path)
    if fmt == "bts":
        return BtsSource(cfg_data)
    if fmt == "kitti":
        return KittiSource(cfg_data)
    return LabeledSource(path)


def data_fingerprint(cfg_data: dict) -> str:
    """Hex SHA-256 of the dataset cfg_data names, cheap to compute: its format and what each
    source lists (CSV or list files and the synthetic marker; a .mat's size and time). A
    re-rendered or re-listed dataset gets another one; an image edited in place does not."""
    source = open_source(cfg_data)
    digest = hashlib.sha256(source.format.encode("utf-8"))
    for part in source.identity():
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def plural(n: int, noun: str) -> str:
    """'1 scene', '2 scenes'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


# --------------------------------------------------------------------------- dataset

def _frame_size(cfg_data: dict) -> tuple[int, int] | None:
    size = cfg_data.get("size")
    if size is None:
        return None
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ConfigError(f"data.size must be null or [H, W] in pixels, got {size!r}", "data.size")
    return int(size[0]), int(size[1])


def resize_frame(rgb: torch.Tensor, depth: torch.Tensor, focal: float, size: tuple[int, int],
                 resize_depth: bool = True):
    """RGB bilinear (antialiased), depth nearest (no blending across edges, holes stay 0)
    unless resize_depth is False (GT kept at its own resolution, for scoring); focal scales
    with the width."""
    h, w = rgb.shape[-2:]
    if (h, w) == tuple(size):
        return rgb, depth, focal
    rgb = resize_rgb(rgb[None], size)[0]
    if resize_depth:
        depth = F.interpolate(depth[None], size=size, mode="nearest")[0]
    return rgb, depth, focal * size[1] / w


class DepthDataset(torch.utils.data.Dataset):
    """Frames of one split as sample dicts: rgb float32 [3,H,W] in [0,1], depth float32
    [1,H,W] metres (0 = invalid), name (unique id), scene, focal (px, scaled with any
    resize), index. Frames are resized to `size` when given, then augmented when
    `augment_cfg` is given (seeded per (seed, epoch, index): see `set_epoch`). native_gt: the
    depth stays at the stored resolution while RGB is resized (what scoring needs: the NYU
    protocol compares with the GT as it is)."""

    def __init__(self, records: list[Record], source, *, split: str, size: tuple[int, int] | None = None,
                 augment_cfg: dict | None = None, seed: int = 0, min_depth: float = 1e-3, max_depth: float = 10.0,
                 native_gt: bool = False):
        self.records = list(records)
        self.source = source
        self.format = source.format
        self.root = source.root
        self.is_synthetic = bool(source.is_synthetic)
        self.split = split
        self.size = size
        self.augment_cfg = augment_cfg
        self.seed = int(seed)
        self.epoch = 0
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.native_gt = bool(native_gt)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation of every sample is drawn from (seed, epoch, index)."""
        self.epoch = int(epoch)

    def load_frame(self, index: int) -> tuple[torch.Tensor, torch.Tensor, float, str]:
        """(rgb [3,H,W], depth [1,H,W] m, focal px, depth encoding) at the stored
        resolution, checked: same size, at least one valid depth pixel."""
        record = self.records[index]
        rgb, depth, encoding = self.source.load(record)
        if tuple(depth.shape) != tuple(rgb.shape[-2:]):
            raise DataError(f"depth is {depth.shape[0]}x{depth.shape[1]} but its RGB "
                            f"{self.source.where(record.rgb)} is {rgb.shape[1]}x{rgb.shape[2]}",
                            self.source.where(record.depth))
        if not np.any((depth > self.min_depth) & (depth < self.max_depth)):
            raise DataError(f"depth map has no valid pixel (none in ({self.min_depth:g}, {self.max_depth:g}) m)",
                            self.source.where(record.depth))
        focal = record.focal if record.focal is not None else NYU_FOCAL * rgb.shape[-1] / NYU_WIDTH
        return rgb, torch.from_numpy(depth)[None], float(focal), encoding

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        rgb, depth, focal, _ = self.load_frame(index)
        if self.size is not None:
            rgb, depth, focal = resize_frame(rgb, depth, focal, self.size, resize_depth=not self.native_gt)
        sample = {"rgb": rgb, "depth": depth, "name": record.name, "scene": record.scene,
                  "focal": focal, "index": index}
        if self.augment_cfg is not None:
            sample = augment_sample(sample, augment_rng(self.seed, self.epoch, index), self.augment_cfg,
                                    synthetic=self.is_synthetic)
        return sample

    def gt_size(self) -> tuple[int, int]:
        """[H, W] of the ground truth this dataset returns (without augmentation)."""
        if self.size is not None and not self.native_gt:
            return self.size
        return tuple(self.load_frame(0)[1].shape[-2:])


def build_dataset(cfg: dict, split: str, augment: bool | None = None, native_gt: bool = False) -> DepthDataset:
    """The `split` ("train", "val", "test") of the dataset cfg["data"] describes. Every
    listed file must exist. augment defaults to split == "train" and augment.enabled;
    native_gt keeps the depth at its stored resolution (see DepthDataset)."""
    cfg_data = cfg["data"]
    source = open_source(cfg_data)
    records = split_records(source, split, cfg_data)
    if not records:
        raise DataError(f"the {split} split is empty ({source.listing(split)})", source.root)
    missing = source.missing(records)
    if missing:
        more = f"; {len(missing) - 1} more missing" if len(missing) > 1 else ""
        raise DataError(f"file not found (listed in {source.listing(split)}{more})", missing[0])
    repeated = repeated_frames(records)
    if repeated:
        raise DataError(repeated_message(repeated, source, split), source.where(repeated[0]))
    if augment is None:
        augment = split == "train" and bool(cfg["augment"]["enabled"])
    return DepthDataset(records, source, split=split, size=_frame_size(cfg_data),
                        augment_cfg=cfg["augment"] if augment else None, seed=int(cfg["run"]["seed"]),
                        min_depth=float(cfg_data["min_depth"]), max_depth=float(cfg_data["max_depth"]),
                        native_gt=native_gt)


def repeated_message(repeated: list[str], source, split: str) -> str:
    more = f"; {plural(len(repeated) - 1, 'other frame')} too" if len(repeated) > 1 else ""
    return f"listed more than once in the {split} split ({source.listing(split)}{more}); remove the repeated lines"


def eigen_crop_default(cfg_data: dict, dataset: DepthDataset) -> bool | str:
    """data.eigen_crop resolved to the evaluation crop `metrics.crop_mask` takes. NYU:
    true/false as set; `auto` = on for real (non-synthetic) NYU data whose GT has the 3:4
    aspect of 480x640, off for synthetic data. KITTI: "kitti_garg" for auto (BTS/AdaBins's
    KITTI protocol), "kitti_eigen" (KITTI's Eigen crop) for true, False for false."""
    value = cfg_data.get("eigen_crop", "auto")
    if not (isinstance(value, bool) or value == "auto"):
        raise ConfigError(f"data.eigen_crop must be auto, true or false, got {value!r}", "data.eigen_crop")
    if dataset.format == "kitti":
        return "kitti_garg" if value == "auto" else "kitti_eigen" if value else False
    if isinstance(value, bool):
        return value
    if dataset.is_synthetic or len(dataset) == 0:
        return False
    h, w = dataset.gt_size()
    return h * 4 == w * 3


def loader_workers(cfg_data: dict, device_type: str = "cpu") -> int:
    """data.workers resolved: a count as set; `auto` = 0 (load in the training process) when
    the step runs on the CPU with at most 2 usable cores, else 2. There, worker processes
    take the cores the step needs: a cached freeze-mode meta run trained about a fifth
    faster without them and a base learner as fast (benchmarks/NOTES.md). A GPU step leaves
    the cores to the workers; bigger machines keep the earlier default of 2."""
    value = cfg_data.get("workers", "auto")
    if value == "auto":
        return 0 if device_type == "cpu" and usable_cpus() <= 2 else 2
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"data.workers must be auto or a count >= 0, got {value!r}", "data.workers")
    return value
