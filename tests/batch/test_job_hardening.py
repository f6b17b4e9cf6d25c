"""Large jobs under odd files and races, through real ``cellsdk predict --out`` processes: a second job on the
same output, file names with line breaks, quotes or bytes that are not UTF-8, symlink loops, repeated paths."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cellsdk.batch.jobs import job_file, lock_file
from cellsdk.batch.results import original_path, read_rows, result_columns
from tests.conftest import RAW_SAMPLES

CELLSDK = str(Path(sys.executable).with_name("cellsdk"))
SAMPLE = sorted(RAW_SAMPLES.rglob("*.jpg"))[0]
LABELS = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]
COLUMNS = result_columns(LABELS)
FORMATS = [".csv", ".jsonl",
           pytest.param(".parquet", marks=pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None,
                                                               reason="pyarrow is not installed: pip install "
                                                                      "'cellsdk[parquet]'"))]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names (bytes, symlinks)")


def _predict(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CELLSDK, "predict", *map(str, args), "--quiet"], capture_output=True, text=True,
                          errors="replace", timeout=timeout)


@pytest.fixture()
def odd_folder(tmp_path: Path) -> Path:
    """Two good images with odd names (bytes that are not UTF-8; a line break and quotes), a symlink loop, a
    dangling symlink, and a plain good image."""
    root = tmp_path / "odd"
    root.mkdir()
    os.symlink(SAMPLE, os.path.join(os.fsencode(root), b"caf\xe9.jpg"))
    os.symlink(SAMPLE, root / 'new\nline "quoted", name.jpg')
    os.symlink("b.jpg", root / "a.jpg")
    os.symlink("a.jpg", root / "b.jpg")
    os.symlink("/nowhere/cell.jpg", root / "dangling.jpg")
    os.symlink(SAMPLE, root / "good.jpg")
    return root


@pytest.mark.parametrize("suffix", FORMATS)
def test_odd_names_and_symlink_loops_get_rows_and_resume_exactly(odd_folder, tmp_path, suffix):
    out = tmp_path / f"results{suffix}"
    first = _predict(odd_folder, "--out", out)
    assert first.returncode == 1, first.stderr  # 1: some images could not be classified, none lost
    assert "Traceback" not in first.stderr and "UnicodeEncodeError" not in first.stderr
    rows = {original_path(row["path"]): row for row in read_rows(out, COLUMNS)}
    names = {os.fsencode(Path(p).name): row for p, row in rows.items()}
    assert set(names) == {b"caf\xe9.jpg", b'new\nline "quoted", name.jpg', b"a.jpg", b"b.jpg", b"dangling.jpg",
                          b"good.jpg"}
    for good in (b"caf\xe9.jpg", b'new\nline "quoted", name.jpg', b"good.jpg"):
        assert names[good]["label"] == names[b"good.jpg"]["label"] and not names[good]["error"]
    assert "loop of symbolic links" in names[b"a.jpg"]["error"] and "loop" in names[b"b.jpg"]["error"]
    assert "symbolic link to '/nowhere/cell.jpg', which does not exist" in names[b"dangling.jpg"]["error"]
    stored = [row["path"] for row in read_rows(out, COLUMNS)]
    assert any(p.endswith("caf\\udce9.jpg") for p in stored)  # the documented escape, valid UTF-8 on disk
    if suffix != ".parquet":
        out.read_bytes().decode("utf-8")
    again = _predict(odd_folder, "--out", out)  # resuming finds every row, the escaped name included
    assert again.returncode == 1 and "6 rows, 0 new, 6 from an earlier run" in again.stdout, again.stdout


def test_a_torn_row_inside_a_quoted_line_break_is_cut_before_that_row(odd_folder, tmp_path):
    out = tmp_path / "results.csv"
    assert _predict(odd_folder / "good.jpg", "--out", out).returncode == 0
    with out.open("a", newline="") as handle:  # killed while writing a row whose quoted name holds a line break
        handle.write(f'"{odd_folder}/new\nline ""quoted"", name.jpg",ig,0.99')
    result = _predict(odd_folder, "--out", out)
    assert result.returncode == 1 and "6 rows, 5 new, 1 from an earlier run" in result.stdout, result.stderr
    paths = [original_path(row["path"]) for row in read_rows(out, COLUMNS)]
    assert len(paths) == len(set(paths)) == 6


def _slides(tmp_path: Path, count: int) -> Path:
    """A folder of ``count`` distinct paths (symlinks to one sample): a job long enough to interrupt."""
    links = tmp_path / "slides"
    links.mkdir()
    for i in range(count):
        (links / f"cell{i:05d}.jpg").symlink_to(SAMPLE)
    return links


@pytest.mark.slow  # a job of thousands of images, interrupted and finished
def test_a_second_job_on_the_same_output_is_refused_with_the_first_ones_pid(tmp_path):
    links = _slides(tmp_path, 3000)
    out = tmp_path / "shared.csv"
    first = subprocess.Popen([CELLSDK, "predict", str(links), "--out", str(out), "--batch-size", "4", "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out.exists() and out.stat().st_size > 2000):
            time.sleep(0.05)
        assert lock_file(out).read_text() == str(first.pid)
        second = _predict(links, "--out", out)
        if first.poll() is not None:
            pytest.skip("the first job finished before the second started (a very fast machine)")
        assert second.returncode == 1
        assert f"is being written by another cellsdk job (PID {first.pid})" in second.stderr
        assert second.stderr.count("\n") <= 2 and "Traceback" not in second.stderr  # the model line and this one
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert not lock_file(out).exists()  # released by the interrupted job
    finished = _predict(links, "--out", out, timeout=300)
    assert finished.returncode == 0, finished.stderr
    paths = [row["path"] for row in read_rows(out, COLUMNS)]
    assert len(paths) == len(set(paths)) == 3000  # every image once


@pytest.mark.slow  # a job of thousands of images, interrupted and finished
def test_a_killed_job_leaves_no_lock_behind(tmp_path):
    links = _slides(tmp_path, 2000)
    out = tmp_path / "killed.jsonl"
    job = subprocess.Popen([CELLSDK, "predict", str(links), "--out", str(out), "--quiet"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not out.exists():
        time.sleep(0.05)
    job.kill()
    job.wait(timeout=30)
    assert lock_file(out).exists()  # SIGKILL: the file stays, but the kernel released the lock with the process
    resumed = _predict(links, "--out", out, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert len({row["path"] for row in read_rows(out, COLUMNS)}) == 2000


def test_a_repeated_path_gets_one_row_in_a_first_run_as_in_a_resumed_one(tmp_path):
    images = sorted(RAW_SAMPLES.rglob("*.jpg"))[:5]
    listed = tmp_path / "paths.txt"
    listed.write_text("".join(f"{images[i % 5]}\n" for i in range(1000)))
    out = tmp_path / "repeated.csv"
    result = _predict("--from-list", listed, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "5 rows, 5 new, 995 repeated paths skipped" in result.stdout
    summary = json.loads(job_file(out).read_text())["summary"]
    assert summary["rows"] == sum(summary["per_class"].values()) == 5 and summary["duplicates"] == 995
    assert [row["path"] for row in read_rows(out, COLUMNS)] == [str(p) for p in images]
    again = _predict("--from-list", listed, "--out", out)
    assert "5 rows, 0 new, 5 from an earlier run, 995 repeated paths skipped" in again.stdout
    assert json.loads(job_file(out).read_text())["summary"]["per_class"] == summary["per_class"]


def test_printed_lines_stay_one_per_image_whatever_the_name(odd_folder):
    result = _predict(odd_folder)
    assert result.returncode == 1  # the loop and the dangling link
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(line.count("\t") == 1 for line in lines), lines
    assert any("caf\\udce9.jpg\t" in line for line in lines) and any("new\\nline" in line for line in lines)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3 and all("symbolic link" in line for line in errors)
