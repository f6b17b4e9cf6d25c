from __future__ import annotations

import numpy as np
import pytest

from cellsdk.datasets import load_dataset
from cellsdk.errors import DatasetError
from cellsdk.labelmaps import BLOODMNIST, resolve_label_map
from tests.conftest import make_folder, make_npz


def test_npz_any_resolution_and_grayscale(tmp_path):
    ds = load_dataset(make_npz(tmp_path / "gray.npz", size=40, channels=None))
    assert ds.layout == "npz" and ds.labels == ("class_0", "class_1", "class_2")
    assert ds.split("train").load(0).size == (40, 40)
    assert ds.split("train").describe(3).endswith("gray.npz[train][3]")
    assert len(ds.split("all")) == 36 and ds.split("all").load(30).size == (40, 40)


def test_npz_known_label_map_from_name_and_range_check(tmp_path):
    path = make_npz(tmp_path / "bloodmnist_small.npz", classes=8, n=16)
    assert load_dataset(path).labels == BLOODMNIST
    with pytest.raises(DatasetError, match=r"labels out of range 0\.\.2"):
        load_dataset(path, labels="a,b,c")


def test_npz_missing_keys_and_bad_shapes(tmp_path):
    path = tmp_path / "broken.npz"
    np.savez(path, train_images=np.zeros((2, 4, 4, 3), np.uint8), train_labels=np.zeros(2, np.uint8))
    with pytest.raises(DatasetError, match="missing keys val_images, val_labels, test_images, test_labels"):
        load_dataset(path)
    arrays = {f"{s}_{k}": np.zeros((2, 4, 4, 3), np.uint8) if k == "images" else np.zeros((2, 2), np.uint8)
              for s in ("train", "val", "test") for k in ("images", "labels")}
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match="single-label"):
        load_dataset(path)
    arrays = {k: (v[:1, 0] if k == "val_labels" else v[:, 0] if k.endswith("labels") else v) for k, v in arrays.items()}
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match="2 images but 1 labels"):
        load_dataset(path)


def test_npz_negative_label_and_empty_class(tmp_path):
    arrays = {f"{s}_{k}": np.zeros((3, 4, 4, 3), np.uint8) if k == "images" else np.array([0, 1, -1])
              for s in ("train", "val", "test") for k in ("images", "labels")}
    np.savez(tmp_path / "neg.npz", **arrays)
    with pytest.raises(DatasetError, match="out of range"):
        load_dataset(tmp_path / "neg.npz")
    arrays = {k: (np.array([0, 0, 2]) if k.endswith("labels") else v) for k, v in arrays.items()}
    np.savez(tmp_path / "gap.npz", **arrays)
    with pytest.raises(DatasetError, match="class class_1 has no training images"):
        load_dataset(tmp_path / "gap.npz")


def test_not_a_dataset(tmp_path):
    bogus = tmp_path / "data.npz"
    bogus.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"not a readable \.npz"):
        load_dataset(bogus)
    other = tmp_path / "data.csv"
    other.write_text("a,b")
    with pytest.raises(DatasetError, match="unsupported dataset file"):
        load_dataset(other)
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        load_dataset(tmp_path / "empty")


def test_split_folders(tmp_path, samples):
    ds = load_dataset(samples)
    assert ds.layout == "split-folders" and ds.labels == BLOODMNIST
    assert [len(ds.split(s)) for s in ("train", "validation", "test")] == [128, 32, 32]
    assert ds.split("train").class_counts(8).tolist() == [16] * 8
    assert "total" in ds.summary()
    root = make_folder(tmp_path / "d", {"b": 2, "a": 2}, splits=("train",))
    with pytest.raises(DatasetError, match="has no 'test' split"):
        load_dataset(root).split("test")
    assert load_dataset(root).labels == ("a", "b")  # sorted folder names


def test_flat_folder_is_split_stratified_and_seeded(tmp_path):
    root = make_folder(tmp_path / "flat", {"x": 20, "y": 10, "z": 5})
    first, again, other = (load_dataset(root, seed=s) for s in (3, 3, 4))
    assert first.layout == "class-folders"
    assert first.split("test").class_counts(3).tolist() == [4, 2, 1]
    assert first.split("val").class_counts(3).tolist() == [2, 1, 0]  # round(0.5) -> 0
    assert first.split("train").class_counts(3).tolist() == [14, 7, 4]
    assert first.split("test").paths == again.split("test").paths
    assert first.split("test").paths != other.split("test").paths
    all_paths = [p for s in first.split_names for p in first.split(s).paths]
    assert len(all_paths) == len(set(all_paths)) == 35
    assert sorted(first.split("all").paths) == sorted(all_paths)


def test_folder_errors(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 2, "b": 2}, splits=("train", "val"))
    (root / "val" / "c").mkdir()
    with pytest.raises(DatasetError, match=r"val/c: class folder has no images"):
        load_dataset(root)
    (root / "val" / "c").rmdir()
    bad = root / "train" / "a" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"broken\.jpg: unreadable image file"):
        load_dataset(root)
    assert len(load_dataset(root, check_files=False).split("train")) == 5
    bad.unlink()
    (root / "train" / "a" / ".DS_Store.jpg").write_bytes(b"hidden files are ignored")
    assert len(load_dataset(root).split("train")) == 4
    single = make_folder(tmp_path / "one", {"only": 3})
    with pytest.raises(DatasetError, match="only one class"):
        load_dataset(single)
    valonly = load_dataset(make_folder(tmp_path / "v", {"a": 2, "b": 2}, splits=("val",)))
    assert valonly.split_names == ("val",)
    with pytest.raises(DatasetError, match=r"has no 'train' split \(available: val, all\)"):
        valonly.split("train")


def test_numeric_folders_need_a_label_map(tmp_path):
    root = make_folder(tmp_path / "n", {str(i): 2 for i in range(8)})
    with pytest.raises(DatasetError, match="--labels"):
        load_dataset(root)
    assert load_dataset(root, labels="bloodmnist").labels == BLOODMNIST
    with pytest.raises(DatasetError, match="out of range"):
        load_dataset(root, labels="a,b,c")


def test_label_map_resolution():
    assert resolve_label_map("BloodMNIST") == BLOODMNIST
    with pytest.raises(DatasetError, match="unknown label map"):
        resolve_label_map("cifar")
    with pytest.raises(DatasetError, match="repeated"):
        resolve_label_map(["a", "a"])


def test_bad_fractions(tmp_path):
    with pytest.raises(DatasetError, match="leave no training data"):
        load_dataset(make_folder(tmp_path / "f", {"a": 2, "b": 2}), val_fraction=0.5, test_fraction=0.5)
