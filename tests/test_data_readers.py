"""Readers and splits on small files written here in each exact format (docs/design.md §3).

The writers at the top (write_densedepth, write_labeled_mat, write_bts) are shared with
test_augment.py and test_data_cli.py."""

import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from ensemble_mde.config import load_config
from ensemble_mde.data import (
    NYU_FOCAL,
    build_dataset,
    detect_format,
    eigen_crop_default,
    load_depth,
    load_rgb,
    loader_workers,
    scene_split,
)
from ensemble_mde.data import dataset as dataset_module
from ensemble_mde.errors import ConfigError, DataError

H, W = 24, 32  # tiny frames with NYU's 3:4 aspect


def rgb_image(seed: int, size=(H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def depth8(seed: int, size=(H, W)) -> np.ndarray:
    """8-bit DenseDepth train depth, no holes: metres = v / 255 * 10."""
    return np.random.default_rng(seed).integers(10, 250, size, dtype=np.uint8)


def depth16(seed: int, size=(H, W), holes: bool = True) -> np.ndarray:
    """16-bit millimetres, the left column a hole (0)."""
    d = np.random.default_rng(seed).integers(500, 9000, size).astype(np.uint16)
    if holes:
        d[:, 0] = 0
    return d


def write_densedepth(root: Path, scenes=None, n_test: int = 2, with_train: bool = True, val_scenes=None) -> Path:
    """DenseDepth layout: data/nyu2_{train,test}.csv without header; train depth 8-bit,
    test depth 16-bit mm; val_scenes (optional) go to data/nyu2_val.csv."""
    scenes = {"kitchen_0001": 2, "office_0002": 2, "bedroom_0003": 2} if scenes is None else scenes
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    seed = 0
    rows = {"train": [], "val": []}
    if with_train:
        for scene, count in scenes.items():
            split = "val" if val_scenes and scene in val_scenes else "train"
            folder = data / "nyu2_train" / f"{scene}_out"
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                seed += 1
                Image.fromarray(rgb_image(seed)).save(folder / f"{n}.jpg")
                Image.fromarray(depth8(seed)).save(folder / f"{n}.png")
                rows[split].append(f"data/nyu2_train/{scene}_out/{n}.jpg,data/nyu2_train/{scene}_out/{n}.png")
        (data / "nyu2_train.csv").write_text("\n".join(rows["train"]) + "\n")
        if val_scenes:
            (data / "nyu2_val.csv").write_text("\n".join(rows["val"]) + "\n")
    test = data / "nyu2_test"
    test.mkdir(exist_ok=True)
    lines = []
    for n in range(n_test):
        Image.fromarray(rgb_image(100 + n)).save(test / f"{n:05d}_colors.png")
        Image.fromarray(depth16(100 + n)).save(test / f"{n:05d}_depth.png")
        lines.append(f"data/nyu2_test/{n:05d}_colors.png,data/nyu2_test/{n:05d}_depth.png")
    (data / "nyu2_test.csv").write_text("\n".join(lines) + "\n")
    return root


def zip_folder(folder: Path, zip_path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(zip_path, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, prefix + f.relative_to(folder).as_posix())
    return zip_path


def write_bts(folder: Path, lines: dict, size=(H, W)) -> Path:
    """BTS list files {name: [(scene, n), ...]}: lines '/<scene>/rgb_n.jpg /<scene>/sync_depth_n.png f'."""
    for list_name, frames in lines.items():
        text = []
        for scene, n in frames:
            (folder / scene).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb_image(n, size)).save(folder / scene / f"rgb_{n:05d}.jpg")
            Image.fromarray(depth16(n, size)).save(folder / scene / f"sync_depth_{n:05d}.png")
            text.append(f"/{scene}/rgb_{n:05d}.jpg /{scene}/sync_depth_{n:05d}.png 518.8579")
        (folder / list_name).write_text("\n".join(text) + "\n")
    return folder


def labeled_frames(n: int = 1449, w: int = 8, h: int = 6):
    """Arrays in the h5py axis order of the v7.3 .mat: images (N,3,W,H), depths (N,W,H).
    Values encode (frame, channel, x, y) so a wrong transpose shows."""
    x = np.arange(w)[:, None]
    y = np.arange(h)[None, :]
    frame = np.arange(n)[:, None, None]
    images = np.stack([(frame * 7 + c * 50 + x * 10 + y) % 256 for c in range(3)], axis=1).astype(np.uint8)
    depths = (1.0 + 0.5 * x + 0.05 * y + 0.001 * frame).astype(np.float32)
    raw = depths.copy()
    raw[:, 0, :] = 0.0  # a hole column (x = 0) in the raw depth
    return images, depths, raw


def write_labeled_mat(path: Path, scenes=None) -> Path:
    images, depths, raw = labeled_frames()
    with h5py.File(path, "w") as f:
        f["images"], f["depths"], f["rawDepths"] = images, depths, raw
        if scenes is not None:  # a MATLAB cell array: object references to uint16 char arrays
            refs = f.create_group("#refs#")
            ref_list = []
            for i, name in enumerate(scenes):
                refs[str(i)] = np.array([[ord(c)] for c in name], dtype=np.uint16)
                ref_list.append(refs[str(i)].ref)
            f.create_dataset("scenes", data=np.array([ref_list], dtype=h5py.ref_dtype))
    return path


def config(path, *overrides) -> dict:
    return load_config(["defaults"], overrides=[f"data.path={path}", *overrides])


# --------------------------------------------------------------------------- tests

def test_depth_png_bit_depth_decides_the_scale(tmp_path):
    Image.fromarray(np.full((2, 3), 51, np.uint8)).save(tmp_path / "d8.png")
    Image.fromarray(np.full((2, 3), 1234, np.uint16)).save(tmp_path / "d16.png")
    assert torch.allclose(load_depth(tmp_path / "d8.png"), torch.full((1, 2, 3), 2.0))  # 51/255*10
    assert torch.allclose(load_depth(tmp_path / "d16.png"), torch.full((1, 2, 3), 1.234))  # mm/1000
    Image.fromarray(np.array([[[255, 0, 128]]], np.uint8)).save(tmp_path / "c.png")
    assert load_rgb(tmp_path / "c.png").flatten().tolist() == pytest.approx([1.0, 0.0, 128 / 255])


def test_densedepth_folder_with_headerless_csv(tmp_path):
    root = write_densedepth(tmp_path / "nyu")
    assert detect_format(root) == "densedepth"
    test = build_dataset(config(root), "test")
    assert len(test) == 2 and test.format == "densedepth" and not test.is_synthetic
    s = test[1]
    assert s["rgb"].shape == (3, H, W) and s["rgb"].dtype == torch.float32
    assert s["name"] == "nyu2_test/00001_colors" and s["scene"] == "test" and s["index"] == 1
    expected = torch.from_numpy(depth16(101).astype(np.float32) / 1000.0)[None]
    assert torch.equal(s["depth"], expected)  # 16-bit test depth: millimetres
    assert s["focal"] == pytest.approx(NYU_FOCAL * W / 640)
    assert torch.allclose(s["rgb"], torch.from_numpy(rgb_image(101)).permute(2, 0, 1).float() / 255)

    train = build_dataset(config(root), "train", augment=False)
    val = build_dataset(config(root), "val")
    assert len(train) + len(val) == 6 and len(val) == 2  # one of 3 scenes; the first CSV line is data
    both = {r.name: (d, i) for d in (train, val) for i, r in enumerate(d.records)}
    dataset, i = both["nyu2_train/kitchen_0001_out/0"]  # first line of nyu2_train.csv, written with seed 1
    sample = dataset[i]
    assert sample["scene"] == "kitchen_0001"
    assert torch.allclose(sample["depth"][0], torch.from_numpy(depth8(1)).float() * 10 / 255)  # 8-bit: v/255*10


def test_zip_reads_the_same_frames_as_the_folder(tmp_path):
    root = write_densedepth(tmp_path / "nyu")
    archive = zip_folder(root, tmp_path / "nyu_data.zip", prefix="nyu_data/")
    assert detect_format(archive) == "densedepth"
    for split in ("train", "test"):
        a = build_dataset(config(root), split, augment=False)
        b = build_dataset(config(archive), split, augment=False)
        assert [r.name for r in a.records] == [r.name for r in b.records]
        for i in range(len(a)):
            assert torch.equal(a[i]["rgb"], b[i]["rgb"]) and torch.equal(a[i]["depth"], b[i]["depth"])
    assert build_dataset(config(archive), "test").root == str(archive)


def test_root_with_only_the_test_part(tmp_path):
    root = write_densedepth(tmp_path / "nyu", with_train=False, n_test=3)
    assert len(build_dataset(config(root), "test")) == 3
    with pytest.raises(DataError, match="no train split"):
        build_dataset(config(root), "train")


def test_own_val_csv_and_synthetic_marker(tmp_path):
    root = write_densedepth(tmp_path / "synth", val_scenes={"office_0002"})
    (root / "synthetic.json").write_text("{}")
    val = build_dataset(config(root), "val")
    train = build_dataset(config(root), "train")
    assert {r.scene for r in val.records} == {"office_0002"} and len(train) == 4
    assert val.is_synthetic and not eigen_crop_default(config(root)["data"], val)
    real = build_dataset(config(write_densedepth(tmp_path / "real")), "test")
    assert eigen_crop_default(config(real.root)["data"], real)  # 24x32 GT, 3:4 like 480x640
    assert not eigen_crop_default({**config(real.root)["data"], "eigen_crop": False}, real)


def test_loader_workers_auto_follows_the_usable_cores(monkeypatch):
    monkeypatch.setattr(dataset_module, "usable_cpus", lambda: 2)
    assert loader_workers({"workers": "auto"}) == 0        # 2 cores: load in the training process
    assert loader_workers({"workers": "auto"}, "cuda") == 2  # unless the step runs on a GPU
    monkeypatch.setattr(dataset_module, "usable_cpus", lambda: 16)
    assert loader_workers({"workers": "auto"}) == 2
    assert loader_workers({"workers": 0}) == 0 and loader_workers({"workers": 5}) == 5   # a count as set
    for bad in ("two", -1, True, 1.5):
        with pytest.raises(ConfigError, match="data.workers"):
            loader_workers({"workers": bad})


def test_labeled_mat_transposes_axes_and_uses_the_official_split(tmp_path):
    images, depths, raw = labeled_frames()
    mat = write_labeled_mat(tmp_path / "nyu_depth_v2_labeled.mat")
    assert detect_format(mat) == "nyu_labeled"
    test = build_dataset(config(mat), "test")
    train = build_dataset(config(mat), "train", augment=False)
    val = build_dataset(config(mat), "val")
    assert len(test) == 654 and len(train) + len(val) == 795 and len(val) > 0
    s = test[0]  # frame number 1 (1-based) is the first official test frame
    assert s["name"] == "0001" and s["rgb"].shape == (3, 6, 8) and s["depth"].shape == (1, 6, 8)
    assert s["rgb"][1, 5, 7] == pytest.approx(images[0, 1, 7, 5] / 255)  # [c, y, x] <- (c, x, y)
    assert s["depth"][0, 4, 3] == pytest.approx(raw[0, 3, 4]) and s["depth"][0, :, 0].eq(0).all()  # rawDepths
    t = train[0]  # frame number 3 is the first official train frame; GT from `depths` (no holes)
    assert t["name"] == "0003" and t["depth"][0, 2, 0] == pytest.approx(depths[2, 0, 2])
    assert {r.scene for r in train.records}.isdisjoint({r.scene for r in val.records})
    assert train.records[0].scene == "frames_0001-0010"  # no `scenes` dataset: blocks of frame numbers


def test_labeled_mat_scene_names_from_object_references(tmp_path):
    names = [f"scene_{i // 4:03d}" for i in range(1449)]
    mat = write_labeled_mat(tmp_path / "labeled.mat", scenes=names)
    train = build_dataset(config(mat), "train", augment=False)
    val = build_dataset(config(mat), "val")
    assert train.records[0].scene == names[2]
    assert all(r.scene == names[int(r.name) - 1] for r in val.records)
    assert {r.scene for r in train.records}.isdisjoint({r.scene for r in val.records})


def test_bts_list_with_leading_slashes(tmp_path):
    folder = write_bts(tmp_path / "bts", {"my_train_files.txt": [("kitchen_0028b", 45), ("bathroom_0001", 46)],
                                          "my_test_files.txt": [("bathroom", 507)]})
    assert detect_format(folder) == "bts" and detect_format(folder / "my_test_files.txt") == "bts"
    test = build_dataset(config(folder), "test")
    s = test[0]
    assert s["name"] == "bathroom/rgb_00507" and s["scene"] == "bathroom" and s["focal"] == pytest.approx(518.8579)
    assert torch.equal(s["depth"], torch.from_numpy(depth16(507).astype(np.float32) / 1000)[None])
    train = build_dataset(config(folder / "my_train_files.txt"), "train", augment=False)
    val = build_dataset(config(folder / "my_train_files.txt"), "val")
    assert sorted(r.scene for r in train.records + val.records) == ["bathroom_0001", "kitchen_0028b"]
    # images under another root, lists elsewhere: data.test_root says where
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "test.txt").write_text((folder / "my_test_files.txt").read_text())
    moved = build_dataset(config(lists / "test.txt", f"data.test_root={folder}"), "test")
    assert torch.equal(moved[0]["depth"], s["depth"])


def test_scene_disjoint_validation_split(tmp_path):
    scenes = [f"room_{i:02d}" for i in range(40) for _ in range(3)]
    val = scene_split(scenes, 0.05, seed=0)
    assert len(val) == 2 and val <= set(scenes)  # round(0.05 * 40)
    assert scene_split(scenes, 0.05, seed=0) == val and scene_split(scenes, 0.05, seed=1) != val
    assert len(scene_split(["a", "b"], 0.05, 0)) == 1 and len(scene_split(["a", "b"], 0.9, 0)) == 1
    assert scene_split(["a", "a"], 0.5, 0) == set()

    root = write_densedepth(tmp_path / "nyu", scenes={f"room_{i:02d}": 1 for i in range(10)}, n_test=1)
    cfg = config(root, "data.val_fraction=0.3")
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(val) == 3 and len(train) == 7
    assert {r.scene for r in train.records}.isdisjoint({r.scene for r in val.records})
    other_seed = config(root, "data.val_fraction=0.3", "run.seed=5")  # run seed does not move the split
    assert [r.name for r in build_dataset(other_seed, "val").records] == [r.name for r in val.records]
    one = write_densedepth(tmp_path / "one", scenes={"only_room": 3}, n_test=1)
    with pytest.raises(DataError, match="at least 2"):
        build_dataset(config(one), "val")


def test_resize_scales_focal_and_keeps_depth_values(tmp_path):
    root = write_densedepth(tmp_path / "nyu")
    s = build_dataset(config(root, "data.size=[12, 16]"), "test")[0]
    assert s["rgb"].shape == (3, 12, 16) and s["focal"] == pytest.approx(NYU_FOCAL * 16 / 640)
    full = depth16(100).astype(np.float32) / 1000
    assert set(s["depth"].flatten().tolist()) <= set(full.flatten().tolist())  # nearest: no blended depth


def test_unknown_format_names_the_path_and_the_formats(tmp_path):
    (tmp_path / "README.md").write_text("not a dataset")
    with pytest.raises(DataError) as e:
        detect_format(tmp_path)
    assert str(e.value).startswith(f"{tmp_path}: unknown dataset format")
    assert all(fmt in str(e.value) for fmt in ("densedepth", "bts", "nyu_labeled"))

