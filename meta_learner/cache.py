"""The base-prediction cache for freeze mode: the K frozen base learners run once over the
un-augmented frames, and meta-learner epochs read their depth maps from an HDF5 file.

File: `<cache_dir>/preds-<key>.h5`: `depths` [N,K,H,W], the float16 depth maps (metres, at
the dataset's frame resolution: each base runs at its own input size and its depth is
resampled to the frame) stored losslessly compressed (`encode_maps`: each float16 bit pattern
less its prediction from the left, upper and upper-left neighbours, folded to a small unsigned
number, then HDF5's byte shuffle and gzip, one chunk per sample), and `names` [N] (sample names, in dataset order). The key is a SHA-256 of
the base checkpoints' hashes (`ensemble_mde.io.file_sha256`) and the data identity
(`data_identity`): a changed base checkpoint or data split gives another file. The key is
also stored in the file's attrs and checked on open; a stale or unreadable file is rebuilt.
A fill holds an exclusive lock (`.<file>.lock`, fcntl.flock: a second process gets one line
naming the filler's pid) and writes a temporary file that it renames when complete, so a
killed fill never leaves a half cache behind.
Size: at most N*K*H*W*2 bytes (24,231 frames x 3 learners at 480x640: 44.7 GB); depth maps
are smooth, so the compressed file is a fraction of that (benchmarks/bench_cache_size.py
prints bytes per frame per base; benchmarks/NOTES.md has the figures).

HDF5 handles are opened lazily once per process (checked by pid): DataLoader workers each
open their own.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from ensemble_mde.data.augment import augment_rng, augment_sample
from ensemble_mde.errors import DataError
from ensemble_mde.io import exclusive_lock
from ensemble_mde.progress import task_progress
from meta_learner.ensemble import run_bases

# 4: float16 maps compressed with a 2-D prediction (encode_maps); 3: with row differences (26%
# larger files); 2: each base at its own input size; 1 ran all at the frame size. Files of an
# older format are read as stale and rebuilt.
CACHE_FORMAT = "ensemble-mde-cache/4"
GZIP_LEVEL = 4
KEY_CHARS = 24  # hex characters of the key in the file name


def _sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def data_identity(root: str | Path, data_format: str, split: str, names: list[str],
                  frame_size: tuple[int, int]) -> str:
    """Hex SHA-256 of what decides the cached frames: dataset root, format, split, the
    sample names in order, and the frame size [H, W] the bases see."""
    return _sha256_json({"root": str(root), "format": str(data_format), "split": str(split),
                         "names": [str(n) for n in names], "frame_size": [int(v) for v in frame_size]})


def cache_key(base_hashes: list[str], data_id: str) -> str:
    """Hex SHA-256 of the ordered base checkpoint hashes and the data identity."""
    return _sha256_json({"format": CACHE_FORMAT, "bases": [str(h) for h in base_hashes], "data": str(data_id)})


def encode_maps(maps: np.ndarray) -> np.ndarray:
    """float16 [..., H, W] -> uint16 [..., H, W]: each bit pattern minus its gradient
    prediction left + up - up_left (zero outside the map; mod 2**16), the signed residual
    folded to 0, -1, 1, -2 ... -> 0, 1, 2, 3 ... (zigzag). A smooth positive depth map has
    patterns that change nearly linearly in both directions, so the residuals are small
    numbers with zero high bytes, which shuffle + gzip pack tightly; `decode_maps` inverts
    it exactly (benchmarks/NOTES.md: 25% smaller files than row differences alone)."""
    bits = np.ascontiguousarray(maps, dtype=np.float16).view(np.uint16)
    residual = np.diff(np.diff(bits, axis=-1, prepend=np.uint16(0)), axis=-2, prepend=np.uint16(0))
    signed = residual.view(np.int16)
    return ((signed << 1) ^ (signed >> 15)).view(np.uint16)


def decode_maps(encoded: np.ndarray) -> np.ndarray:
    """The float16 maps `encode_maps` was given, bit for bit."""
    encoded = np.asarray(encoded, dtype=np.uint16)
    residual = (encoded >> 1) ^ (np.uint16(0) - (encoded & np.uint16(1)))
    return np.cumsum(np.cumsum(residual, axis=-2, dtype=np.uint16), axis=-1, dtype=np.uint16).view(np.float16)


def _collate_frames(samples: list[dict]) -> dict:
    """Stack RGB [B,3,H,W]; keep names; the frame sizes must agree."""
    sizes = {tuple(s["rgb"].shape[-2:]) for s in samples}
    if len(sizes) > 1:
        raise DataError(f"the prediction cache needs one frame size, found {sorted(sizes)}; "
                        "set data.size to resize the frames", "data.size")
    return {"rgb": torch.stack([s["rgb"] for s in samples]), "name": [str(s["name"]) for s in samples]}


def require_unaugmented(dataset) -> None:
    """The cache holds predictions of the plain frames; an augmenting dataset is refused."""
    if getattr(dataset, "augment_cfg", None) is not None:
        raise DataError("the prediction cache needs the un-augmented dataset "
                        "(build_dataset(cfg, split, augment=False)); augmentation is applied afterwards")


class PredictionCache:
    """Cached base depths of one dataset split: `get(index) -> [K,H,W] float32` metres."""

    def __init__(self, path: str | Path, key: str):
        self.path = Path(path)
        self.key = key
        self._file = None
        self._pid = None
        self._names: list[str] | None = None
        self.complete = self._verify()

    @classmethod
    def open(cls, cache_dir: str | Path, base_hashes: list[str], data_id: str) -> "PredictionCache":
        """The cache of these base checkpoints on this data (complete or still to `fill`)."""
        key = cache_key(base_hashes, data_id)
        return cls(Path(cache_dir) / f"preds-{key[:KEY_CHARS]}.h5", key)

    def _verify(self) -> bool:
        """True when the file exists, is readable, complete and holds this key; a stale or
        broken file is removed (it will be rebuilt)."""
        if not self.path.exists():
            return False
        try:
            with h5py.File(self.path, "r") as f:
                ok = (f.attrs.get("format") == CACHE_FORMAT and f.attrs.get("key") == self.key
                      and bool(f.attrs.get("complete", False)) and "depths" in f and "names" in f
                      and f["depths"].shape[0] == f["names"].shape[0])
        except OSError:
            ok = False
        if not ok:
            self.path.unlink(missing_ok=True)
        return ok

    @property
    def lock_path(self) -> Path:
        """The lock file a fill holds (fcntl.flock) while it runs."""
        return self.path.parent / f".{self.path.name}.lock"

    def _handle(self) -> h5py.File:
        if not self.complete:
            raise DataError("the prediction cache is not filled yet; call fill() first", self.path)
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")   # a handle inherited by fork is dropped, not used
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": None}

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __len__(self) -> int:
        return int(self._handle()["depths"].shape[0])

    @property
    def names(self) -> list[str]:
        """Sample names in dataset order (as filled)."""
        if self._names is None:
            self._names = [n.decode("utf-8") for n in self._handle()["names"][:]]
        return self._names

    @property
    def num_learners(self) -> int:
        return int(self._handle()["depths"].shape[1])

    def get(self, index: int) -> torch.Tensor:
        """Base depths of sample `index`: float32 [K,H,W] metres."""
        return torch.from_numpy(decode_maps(self._handle()["depths"][int(index)]).astype(np.float32))

    def fill(self, dataset, bases: list[torch.nn.Module], device: torch.device | str = "cpu", batch_size: int = 8,
             progress: bool = True, workers: int = 0, input_sizes: list | None = None,
             label: str = "caching base predictions", groups=None) -> "PredictionCache":
        """Run the bases (put in eval mode, on `device`) once over the un-augmented `dataset`
        and write their depths; does nothing when the cache is already complete. Base k sees
        each frame resized to input_sizes[k] ([H, W] or None: the frame as it is). groups:
        [(dataset indices, the K models that predict them)] instead of `bases` for every frame
        (out-of-fold stacking: fold k's frames by the fold-k models). `label` names the
        progress bar."""
        if self.complete:
            return self
        require_unaugmented(dataset)
        self.close()
        groups = groups if groups is not None else [(list(range(len(dataset))), list(bases))]
        covered = sorted(i for indices, _ in groups for i in indices)
        if covered != list(range(len(dataset))):
            raise DataError(f"the cache groups cover {len(covered)} indices of {len(dataset)} frames, not each once",
                            self.path)
        with exclusive_lock(self.lock_path, f"prediction cache {self.path}",
                            "wait until it is filled, then run this again"):
            self.complete = self._verify()  # filled by the process that held the lock before us
            if not self.complete:
                for partial in self.path.parent.glob(f".{self.path.name}.*.partial"):
                    partial.unlink()  # left by a fill that died: no fill runs without the lock
                self._write(dataset, groups, device, batch_size, progress, workers, input_sizes, label)
        return self

    @torch.inference_mode()
    def _write(self, dataset, groups, device, batch_size, progress, workers, input_sizes, label) -> None:
        tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.partial"
        try:
            with h5py.File(tmp, "w") as f, task_progress(progress) as bar:
                task = bar.add_task(label, total=len(dataset))
                f.attrs["format"] = CACHE_FORMAT
                f.attrs["key"] = self.key
                f.attrs["complete"] = False
                names = f.create_dataset("names", shape=(len(dataset),), dtype=h5py.string_dtype("utf-8"))
                depths = None
                for indices, bases in groups:
                    bases = [base.to(device).eval() for base in bases]
                    labels = [f"base {i}" for i in range(len(bases))]
                    indices = sorted(indices)  # h5py writes rows in increasing order
                    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices),
                                                         batch_size=int(batch_size), shuffle=False,
                                                         num_workers=int(workers), collate_fn=_collate_frames)
                    start = 0
                    for batch in loader:
                        maps, _ = run_bases(bases, labels, batch["rgb"].to(device), input_sizes)
                        if depths is None:
                            k, h, w = maps.shape[1:]
                            depths = f.create_dataset("depths", shape=(len(dataset), k, h, w), dtype="uint16",
                                                      chunks=(1, k, h, w), shuffle=True, compression="gzip",
                                                      compression_opts=GZIP_LEVEL)
                        rows = indices[start:start + maps.shape[0]]
                        if rows[-1] - rows[0] == len(rows) - 1:  # consecutive: a slice, h5py's fast path
                            rows = slice(rows[0], rows[-1] + 1)
                        depths[rows] = encode_maps(maps.float().cpu().numpy().astype(np.float16))
                        names[rows] = batch["name"]
                        start += maps.shape[0]
                        bar.update(task, advance=maps.shape[0])
                if depths is None:
                    raise DataError("cannot cache predictions of an empty dataset")
                f.attrs["complete"] = True
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        self._names = None
        self.complete = True


class CachedMetaDataset(torch.utils.data.Dataset):
    """The sample dict of `dataset` (which must be un-augmented, in the order the cache was
    filled) plus `base_depths` [K,H,W] from the cache. With `cfg_augment` (the `augment:`
    config section, `enabled: true`), rotation/crop/flip apply to rgb, depth and base_depths
    together (bilinear for the predictions, as for RGB) and colour to rgb only, drawn from
    `augment_rng(seed, epoch, index)` like the plain training set."""

    def __init__(self, dataset, cache: PredictionCache, cfg_augment: dict | None = None, seed: int = 0):
        require_unaugmented(dataset)
        self.dataset = dataset
        self.cache = cache
        self.cfg_augment = cfg_augment if cfg_augment and cfg_augment.get("enabled", True) else None
        self.seed = int(seed)
        self.epoch = 0
        if len(cache) != len(dataset):
            raise DataError(f"the prediction cache holds {len(cache)} samples, the dataset {len(dataset)}; "
                            "it belongs to another split", cache.path)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        sample = self.dataset[index]
        if str(sample["name"]) != self.cache.names[index]:
            raise DataError(f"sample {index} is {sample['name']!r} but the cache holds {self.cache.names[index]!r}; "
                            "the dataset order changed since the cache was filled", self.cache.path)
        base_depths = self.cache.get(index)
        if tuple(base_depths.shape[-2:]) != tuple(sample["rgb"].shape[-2:]):
            raise DataError(f"cached predictions are {tuple(base_depths.shape[-2:])}, the frame is "
                            f"{tuple(sample['rgb'].shape[-2:])}", self.cache.path)
        if self.cfg_augment is None:
            return {**sample, "base_depths": base_depths}
        rng = augment_rng(self.seed, self.epoch, index)
        return augment_sample(sample, rng, self.cfg_augment, {"base_depths": base_depths}, extra_mode="bilinear",
                              synthetic=self.dataset.is_synthetic)
