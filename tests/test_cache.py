"""The HDF5 base-prediction cache: values equal recomputed predictions within float16
precision (also after the training augmentation), keys follow the base checkpoints, and
a stale, broken or interrupted cache is never used."""

import os

import numpy as np
import pytest
import torch

from ensemble_mde.data.augment import augment_rng, augment_sample
from ensemble_mde.errors import DataError
from ensemble_mde.io import file_sha256
from meta_learner.cache import (GZIP_LEVEL, CachedMetaDataset, PredictionCache, data_identity, decode_maps,
                                encode_maps)

from conftest import TinyLearner

H, W = 24, 32
N = 6
AUGMENT = {"enabled": True, "rotate_deg": 2.5, "crop": True, "crop_size": [20, 28], "flip": 1.0,
           "color": 1.0, "gamma": [0.9, 1.1], "brightness": [0.75, 1.25], "contrast": [1.0, 1.0],
           "channel": [0.9, 1.1]}
FP16 = dict(rtol=1e-3, atol=1e-3)   # float16 keeps 11 significant bits: relative error <= 2**-11


class FailingLearner(TinyLearner):
    """Raises on its second batch, like a fill killed half-way."""

    calls = 0

    def forward(self, rgb):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("killed")
        return super().forward(rgb)


class FrameDataset(torch.utils.data.Dataset):
    """N un-augmented samples in the project's sample format."""

    is_synthetic = True

    def __init__(self, n: int = N, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.samples = []
        for i in range(n):
            depth = 0.5 + 9 * torch.rand(1, H, W, generator=g)
            depth[:, :2] = 0.0
            self.samples.append({"rgb": torch.rand(3, H, W, generator=g), "depth": depth, "name": f"scene_a/{i:03d}",
                                 "scene": "scene_a", "focal": 518.8579 / 20, "index": i})

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return dict(self.samples[i])


def predictions(bases, rgb: torch.Tensor) -> torch.Tensor:
    """[K,H,W] base depths of one frame, recomputed."""
    with torch.no_grad():
        return torch.cat([b.eval()(rgb[None])["depth"][0] for b in bases])


def save_bases(bases, folder):
    paths = []
    for i, base in enumerate(bases):
        path = folder / f"base{i}.pt"
        torch.save(base.state_dict(), path)
        paths.append(path)
    return [file_sha256(p) for p in paths]


@pytest.fixture
def setup(tmp_path):
    dataset = FrameDataset()
    bases = [TinyLearner(seed=i) for i in range(3)]
    hashes = save_bases(bases, tmp_path)
    data_id = data_identity(tmp_path / "data", "densedepth", "train", [s["name"] for s in dataset.samples], (H, W))
    return dataset, bases, hashes, data_id, tmp_path / "cache"


def test_cached_predictions_equal_recomputed(setup):
    dataset, bases, hashes, data_id, cache_dir = setup
    cache = PredictionCache.open(cache_dir, hashes, data_id)
    assert not cache.complete
    cache.fill(dataset, bases, device="cpu", batch_size=4, progress=False)
    assert cache.complete and len(cache) == N and cache.num_learners == 3
    assert cache.names == [s["name"] for s in dataset.samples]
    for i in range(N):
        got = cache.get(i)
        assert got.dtype == torch.float32 and got.shape == (3, H, W)
        torch.testing.assert_close(got, predictions(bases, dataset[i]["rgb"]), **FP16)
    reopened = PredictionCache.open(cache_dir, hashes, data_id)
    assert reopened.complete
    torch.testing.assert_close(reopened.get(N - 1), cache.get(N - 1), rtol=0, atol=0)
    # loading the frames in worker processes (train-meta's data.workers on a GPU) fills the same file
    by_workers = PredictionCache.open(cache_dir / "workers", hashes, data_id)
    by_workers.fill(dataset, bases, device="cpu", batch_size=4, progress=False, workers=2)
    assert by_workers.names == cache.names
    assert all(torch.equal(by_workers.get(i), cache.get(i)) for i in range(N))


def test_map_coding_is_exact_and_packs_smooth_depth_small(tmp_path):
    """Every float16 pattern (negatives, 0, inf, subnormals) round-trips exactly, and a
    smooth depth map shrinks several-fold in the gzip'd HDF5 chunk where noise does not."""
    import h5py

    patterns = np.arange(2 ** 16, dtype=np.uint16).view(np.float16).reshape(4, 128, 128)
    assert np.array_equal(decode_maps(encode_maps(patterns)).view(np.uint16), patterns.view(np.uint16))
    y, x = np.mgrid[0:240, 0:320]
    smooth = (2.0 + 3.0 * x / 320 + 0.5 * np.sin(y / 40.0)).astype(np.float16)[None]
    noise = np.random.default_rng(0).uniform(0.5, 9.5, size=(1, 240, 320)).astype(np.float16)
    sizes = {}
    for name, maps in (("smooth", smooth), ("noise", noise)):
        with h5py.File(tmp_path / f"{name}.h5", "w") as f:
            f.create_dataset("d", data=encode_maps(maps), chunks=maps.shape, shuffle=True, compression="gzip",
                             compression_opts=GZIP_LEVEL)
            sizes[name] = f["d"].id.get_storage_size()
    assert sizes["smooth"] * 4 < smooth.nbytes and sizes["noise"] > 0.5 * noise.nbytes


def test_augmented_cached_maps_match_augmented_recomputation(setup):
    dataset, bases, hashes, data_id, cache_dir = setup
    cache = PredictionCache.open(cache_dir, hashes, data_id).fill(dataset, bases, batch_size=4, progress=False)
    cached = CachedMetaDataset(dataset, cache, AUGMENT, seed=7)
    cached.set_epoch(3)
    for i in range(N):
        sample = cached[i]
        full = predictions(bases, dataset[i]["rgb"])
        expected = augment_sample(dataset[i], augment_rng(7, 3, i), AUGMENT, {"base_depths": full})
        assert sample["base_depths"].shape == (3, 20, 28) and sample["rgb"].shape == (3, 20, 28)
        torch.testing.assert_close(sample["base_depths"], expected["base_depths"], **FP16)
        assert torch.equal(sample["rgb"], expected["rgb"]) and torch.equal(sample["depth"], expected["depth"])
        assert sample["name"] == dataset[i]["name"]
    # Flip p=1: the un-rotated, un-cropped geometry reduces to a mirror of the cached maps.
    mirror = dict(AUGMENT, rotate_deg=0.0, crop=False, color=0.0)
    plain = CachedMetaDataset(dataset, cache, mirror)[2]
    assert torch.equal(plain["base_depths"], cache.get(2).flip(-1))
    assert torch.equal(plain["rgb"], dataset[2]["rgb"].flip(-1))


def test_without_augmentation_the_sample_gains_base_depths(setup):
    dataset, bases, hashes, data_id, cache_dir = setup
    cache = PredictionCache.open(cache_dir, hashes, data_id).fill(dataset, bases, progress=False)
    sample = CachedMetaDataset(dataset, cache, dict(AUGMENT, enabled=False))[1]
    assert torch.equal(sample["rgb"], dataset[1]["rgb"]) and torch.equal(sample["base_depths"], cache.get(1))
    loader = torch.utils.data.DataLoader(CachedMetaDataset(dataset, cache), batch_size=3, num_workers=2)
    batches = list(loader)                          # each worker opens its own HDF5 handle
    assert torch.equal(batches[1]["base_depths"][0], cache.get(3))


def test_changed_base_checkpoint_rebuilds_the_cache(setup):
    dataset, bases, hashes, data_id, cache_dir = setup
    old = PredictionCache.open(cache_dir, hashes, data_id).fill(dataset, bases, progress=False)
    with torch.no_grad():
        bases[1].conv2.bias += 0.5                  # "retrained" base 1
    new_hashes = save_bases(bases, cache_dir.parent)
    assert new_hashes[1] != hashes[1] and new_hashes[0] == hashes[0]
    new = PredictionCache.open(cache_dir, new_hashes, data_id)
    assert not new.complete and new.path != old.path
    new.fill(dataset, bases, progress=False)
    torch.testing.assert_close(new.get(0), predictions(bases, dataset[0]["rgb"]), **FP16)
    assert not torch.allclose(new.get(0)[1], old.get(0)[1], **FP16)
    other_split = data_identity(cache_dir.parent / "data", "densedepth", "val", old.names, (H, W))
    assert not PredictionCache.open(cache_dir, hashes, other_split).complete


def test_fill_skips_a_complete_cache(setup):
    dataset, bases, hashes, data_id, cache_dir = setup
    PredictionCache.open(cache_dir, hashes, data_id).fill(dataset, bases, progress=False)
    never = [FailingLearner(0)]
    never[0].calls = 1                               # would raise on its next call
    PredictionCache.open(cache_dir, hashes, data_id).fill(dataset, never, progress=False)
    assert never[0].calls == 1


def test_killed_fill_leaves_no_cache(setup):
    dataset, bases, hashes, data_id, cache_dir = setup
    cache = PredictionCache.open(cache_dir, hashes, data_id)
    with pytest.raises(RuntimeError, match="killed"):
        cache.fill(dataset, [bases[0], FailingLearner(1), bases[2]], batch_size=2, progress=False)
    assert not cache.complete and list(cache_dir.iterdir()) == []
    with pytest.raises(DataError, match="fill"):
        cache.get(0)
    # A partial file of a process that died without cleaning up goes at the next fill.
    dead = cache_dir / f".{cache.path.name}.{2**22 + 12345}.partial"
    dead.write_bytes(b"half")
    cache.fill(dataset, bases, progress=False)
    assert not dead.exists() and sorted(os.listdir(cache_dir)) == [cache.path.name]


def test_stale_or_broken_file_is_rebuilt(setup):
    dataset, bases, hashes, data_id, cache_dir = setup
    cache = PredictionCache.open(cache_dir, hashes, data_id).fill(dataset, bases, progress=False)
    import h5py

    cache.close()
    with h5py.File(cache.path, "r+") as f:
        f.attrs["key"] = "0" * 64                   # a file of another key under this name
    assert not PredictionCache.open(cache_dir, hashes, data_id).complete
    assert not cache.path.exists()
    cache = PredictionCache.open(cache_dir, hashes, data_id).fill(dataset, bases, progress=False)
    cache.close()
    cache.path.write_bytes(cache.path.read_bytes()[:2000])   # truncated copy
    assert not PredictionCache.open(cache_dir, hashes, data_id).complete


def test_cache_of_another_order_or_split_is_refused(setup):
    dataset, bases, hashes, data_id, cache_dir = setup
    cache = PredictionCache.open(cache_dir, hashes, data_id).fill(dataset, bases, progress=False)
    shuffled = FrameDataset()
    shuffled.samples.reverse()
    with pytest.raises(DataError, match="order"):
        CachedMetaDataset(shuffled, cache)[0]
    with pytest.raises(DataError, match="another split"):
        CachedMetaDataset(FrameDataset(n=N - 1), cache)


def test_data_identity_covers_names_and_frame_size(tmp_path):
    names = ["a/1", "a/2"]
    base = data_identity(tmp_path, "bts", "train", names, (H, W))
    assert base == data_identity(tmp_path, "bts", "train", list(names), [H, W])
    assert base != data_identity(tmp_path, "bts", "train", names[::-1], (H, W))
    assert base != data_identity(tmp_path, "bts", "train", names, (H, W + 1))
    assert base != data_identity(tmp_path, "densedepth", "train", names, (H, W))


def test_cached_training_set_augments_like_the_plain_training_set(synth_root, tmp_path):
    """On the project's dataset: the cached set (un-augmented frames + augmentation here)
    gives the same rgb/depth as the ordinary augmented training set, epoch by epoch."""
    from ensemble_mde.config import load_config
    from ensemble_mde.data import build_dataset

    cfg = load_config(["defaults"], None, [f"data.path={synth_root}"])
    plain = build_dataset(cfg, "train", augment=False)
    augmented = build_dataset(cfg, "train")
    bases = [TinyLearner(seed=0), TinyLearner(seed=1)]
    data_id = data_identity(synth_root, "densedepth", "train", [r.name for r in plain.records],
                            tuple(plain[0]["rgb"].shape[-2:]))
    cache = PredictionCache.open(tmp_path, ["hash0", "hash1"], data_id).fill(plain, bases, batch_size=8, progress=False)
    cached = CachedMetaDataset(plain, cache, cfg["augment"], seed=cfg["run"]["seed"])
    for epoch in (0, 1):
        cached.set_epoch(epoch)
        augmented.set_epoch(epoch)
        for i in range(3):
            want, got = augmented[i], cached[i]
            assert torch.equal(got["rgb"], want["rgb"]) and torch.equal(got["depth"], want["depth"])
            assert got["base_depths"].shape == (2, *want["rgb"].shape[-2:])
    with pytest.raises(DataError, match="un-augmented"):
        CachedMetaDataset(augmented, cache)
    with pytest.raises(DataError, match="un-augmented"):
        PredictionCache.open(tmp_path, ["other"], data_id).fill(augmented, bases, progress=False)
