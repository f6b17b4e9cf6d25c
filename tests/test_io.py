from __future__ import annotations

import os
import stat

import pytest

from cellsdk._io import atomic_path, write_text


def test_atomic_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "a.txt", "x") or tmp_path / "a.txt"
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_atomic_path_leaves_the_target_alone_on_error(tmp_path):
    target = tmp_path / "b.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError("boom")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["b.txt"]


def test_remove_registered_kills_children_and_deletes_staging_paths_newest_first(tmp_path):
    import subprocess
    import sys

    from cellsdk._io import on_terminate, pending_cleanups, remove_on_terminate, remove_registered

    staging = tmp_path / ".out.staging-1"
    (staging / ".work").mkdir(parents=True)
    (staging / ".work" / "part").write_text("x")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    order = []
    try:
        with remove_on_terminate(staging), on_terminate(child.kill), on_terminate(lambda: order.append("last")):
            assert pending_cleanups() == 3
            assert remove_registered() == 3
            assert child.wait(timeout=30) != 0 and not staging.exists() and order == ["last"]
    finally:
        child.kill()
    assert pending_cleanups() == 0  # the blocks unregistered on their way out
    with remove_on_terminate(tmp_path / "never-made"):
        assert remove_registered() == 1  # a path that does not exist is no error
