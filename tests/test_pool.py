"""The unlabelled pool: cells kept once each, bytes unchanged; a collect folder's pool is never a class."""

from __future__ import annotations

from cellsdk.datasets import load_dataset
from cellsdk.pool import CellPool
from tests.conftest import RAW_SAMPLES, make_folder

CELL = RAW_SAMPLES / "ig" / "MMY_163947.jpg"


def test_a_cell_is_kept_once_with_its_bytes_and_a_non_image_is_not_kept(tmp_path):
    pool = CellPool(tmp_path / "collected")
    first = pool.keep(CELL)
    assert first is not None and first.parent == tmp_path / "collected" / "unlabelled"
    assert first.read_bytes() == CELL.read_bytes() and first.suffix == ".jpg"
    assert pool.keep(CELL.read_bytes()) == first and len(pool) == 1
    assert pool.keep(b"GIF89a but not really") is None and pool.keep(tmp_path / "missing.png") is None
    assert len(pool) == 1 and not list(pool.folder.glob(".*"))  # no temporary files left behind
    passed = list(pool.keeping([CELL, RAW_SAMPLES / "lymphocyte", "not a path"]))
    assert passed == [CELL, RAW_SAMPLES / "lymphocyte", "not a path"] and len(pool) == 1


def test_the_pool_folder_of_a_collect_folder_is_not_a_class(tmp_path):
    make_folder(tmp_path / "collected", {"monocyte": 2, "lymphocyte": 2})
    CellPool(tmp_path / "collected").keep(CELL)
    assert load_dataset(tmp_path / "collected").labels == ("lymphocyte", "monocyte")
