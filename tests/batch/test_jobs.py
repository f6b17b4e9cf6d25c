"""Large prediction jobs: result files (CSV, JSON Lines, Parquet), resuming, per-class summaries, path lists."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cellsdk import Classifier
from cellsdk.batch.jobs import iter_inputs, job_file, run_job
from cellsdk.batch.results import read_rows, result_columns
from cellsdk.cli import predict_command
from cellsdk.errors import ConfigError, MetadataError
from tests.conftest import RAW_SAMPLES

FORMATS = [".csv", ".jsonl",
           pytest.param(".parquet", marks=pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None,
                                                               reason="pyarrow is not installed: pip install "
                                                                      "'cellsdk[parquet]'"))]


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.load()


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """The raw samples, plus one corrupt image in the middle."""
    root = tmp_path / "images"
    shutil.copytree(RAW_SAMPLES, root)
    (root / "eosinophil" / "zz_corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def _rows(out: Path, classifier: Classifier) -> list[dict]:
    return list(read_rows(out, result_columns(classifier.labels)))


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_job_writes_one_row_per_image_with_the_engines_answers(classifier, folder, tmp_path, suffix):
    out = tmp_path / f"results{suffix}"
    errors: list[str] = []
    summary = run_job(classifier, iter_inputs([folder]), out, batch_size=4, progress=False,
                      on_error=lambda path, reason: errors.append(reason))
    paths = [str(p) for p in iter_inputs([folder])]
    rows = _rows(out, classifier)
    assert [row["path"] for row in rows] == [os.path.abspath(p) for p in paths]
    expected = classifier.predict_batch(paths, errors="skip")
    for row, prediction in zip(rows, expected, strict=True):
        if prediction is None:
            assert row["label"] is None and "zz_corrupt.jpg" in row["error"] and row["p_basophil"] is None
        else:
            assert row["error"] is None and row["label"] == prediction.label and row["status"] == prediction.status
            assert row["confidence"] == pytest.approx(prediction.confidence, abs=1e-12)
            assert [row[f"p_{label}"] for label in classifier.labels] == pytest.approx(
                list(prediction.probabilities.values()), abs=1e-12)
    assert len(errors) == 1 and errors[0].startswith(os.path.abspath(folder / "eosinophil" / "zz_corrupt.jpg"))
    assert summary.rows == len(paths) and summary.errors == 1 and summary.resumed == 0 and summary.complete
    assert sum(summary.per_class.values()) == len(paths) - 1
    assert summary.per_class == {label: sum(1 for p in expected if p and p.label == label)
                                 for label in {p.label for p in expected if p}}
    recorded = json.loads(job_file(out).read_text())
    assert recorded["complete"] and recorded["summary"]["rows"] == len(paths)
    assert recorded["job"]["labels"] == list(classifier.labels)
    assert "(errors)" in summary.table() and "total" in summary.table()


class _StopAfter:
    """Inputs that stop the job (as Ctrl-C would) after ``n`` have been taken."""

    def __init__(self, paths, n):
        self.paths, self.n = paths, n

    def __iter__(self):
        for i, path in enumerate(self.paths):
            if i == self.n:
                raise KeyboardInterrupt
            yield path


@pytest.mark.parametrize("suffix", FORMATS)
def test_an_interrupted_job_continues_where_it_stopped(classifier, folder, tmp_path, suffix):
    out = tmp_path / f"results{suffix}"
    paths = list(iter_inputs([folder]))
    with pytest.raises(KeyboardInterrupt):
        run_job(classifier, _StopAfter(paths, 12), out, batch_size=2, progress=False)
    first = _rows(out, classifier)
    assert 0 < len(first) < 12 and not json.loads(job_file(out).read_text())["complete"]
    summary = run_job(classifier, paths, out, batch_size=4, progress=False)
    rows = _rows(out, classifier)
    assert [row["path"] for row in rows] == [os.path.abspath(p) for p in paths]  # each image once, in order
    assert summary.resumed == len(first) and summary.new == len(paths) - len(first) and summary.rows == len(paths)
    again = run_job(classifier, paths, out, batch_size=4, progress=False)  # nothing left to do
    assert again.new == 0 and again.rows == len(paths) and len(_rows(out, classifier)) == len(paths)
    assert again.per_class == summary.per_class and again.errors == summary.errors == 1


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_torn_last_row_is_dropped_and_done_again(classifier, tmp_path, suffix):
    out = tmp_path / f"results{suffix}"
    paths = list(iter_inputs([RAW_SAMPLES]))
    run_job(classifier, paths[:5], out, progress=False)
    with out.open("a") as handle:  # a run killed in the middle of a write
        handle.write(f'{os.path.abspath(paths[5])},neutro' if suffix == ".csv" else '{"path": "x", "lab')
    summary = run_job(classifier, paths, out, progress=False)
    assert summary.resumed == 5 and [row["path"] for row in _rows(out, classifier)] == [
        os.path.abspath(p) for p in paths]


def test_another_models_results_are_not_mixed_in(classifier, tmp_path):
    out = tmp_path / "results.csv"
    paths = list(iter_inputs([RAW_SAMPLES]))[:3]
    run_job(classifier, paths, out, progress=False)
    recorded = json.loads(job_file(out).read_text())
    recorded["job"]["model_sha256"] = "0" * 64
    job_file(out).write_text(json.dumps(recorded))
    with pytest.raises(ConfigError, match=r"another model.*--overwrite"):
        run_job(classifier, paths, out, progress=False)
    summary = run_job(classifier, paths, out, overwrite=True, progress=False)
    assert summary.resumed == 0 and summary.rows == 3
    other = tmp_path / "other.csv"
    other.write_text("path,label,p_a\nx.jpg,a,1.0\n")
    with pytest.raises(MetadataError, match="another job's results"):
        run_job(classifier, paths, other, progress=False)
    with pytest.raises(ConfigError, match=r"\.csv, \.jsonl or \.parquet"):
        run_job(classifier, paths, tmp_path / "results.txt", progress=False)


def test_inputs_are_walked_lazily_in_order_and_lists_are_read(tmp_path):
    listed = tmp_path / "paths.txt"
    first = sorted(RAW_SAMPLES.glob("ig/*.jpg"))
    listed.write_text(f"# slide 12\n{first[0]}\n\n  {first[1]}  \n{RAW_SAMPLES / 'platelet'}\n")
    got = list(iter_inputs([], listed))
    assert got[:2] == first[:2] and got[2:] == sorted((RAW_SAMPLES / "platelet").glob("*.jpg"))
    walked = list(iter_inputs([RAW_SAMPLES]))
    assert walked == sorted(p for p in RAW_SAMPLES.rglob("*.jpg"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no image files"):
        list(iter_inputs([tmp_path / "empty"]))
    with pytest.raises(ConfigError, match="cannot read the list"):
        list(iter_inputs([], tmp_path / "missing.txt"))


def test_cli_out_prints_the_summary_and_names_bad_images(folder, tmp_path):
    out = tmp_path / "r.jsonl"
    listed = tmp_path / "more.txt"
    listed.write_text(f"{next(iter_inputs([RAW_SAMPLES]))}\n")
    result = CliRunner().invoke(predict_command, [str(folder), "--from-list", str(listed), "--out", str(out),
                                                  "--quiet"])
    assert result.exit_code == 1, result.output  # one image could not be read
    assert "zz_corrupt.jpg" in result.output and "Traceback" not in result.output
    assert "class" in result.output and "total" in result.output and f"wrote {out}" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(list(iter_inputs([folder]))) + 1
    stdin = CliRunner().invoke(predict_command, ["--from-list", "-", "--quiet"], input=listed.read_text())
    assert stdin.exit_code == 0 and stdin.output.count("\t") == 1


@pytest.mark.parametrize(("args", "message"), [
    ([], "give IMAGES"),
    (["samples/pbc_raw", "--address", "auto"], "add --engine ray"),
    (["samples/pbc_raw", "--overwrite"], "--overwrite goes with --out"),
    (["samples/pbc_raw", "--out", "x.txt"], ".csv, .jsonl or .parquet"),
    (["samples/pbc_raw", "--engine", "ray"], "add --out"),
    (["samples/pbc_raw", "--engine", "ray", "--out", "x.csv"], "writes a Parquet folder"),
])
def test_cli_bad_job_options_are_one_line(args, message):
    result = CliRunner().invoke(predict_command, args)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


@pytest.mark.slow  # kills and restarts a CLI job
def test_a_killed_cli_job_resumes(tmp_path):
    """A real process, stopped by SIGTERM part-way, then run again: every image once, in order, none lost."""
    images = sorted(RAW_SAMPLES.rglob("*.jpg"))
    links = tmp_path / "slides"
    links.mkdir()
    for i in range(1200):  # 1,200 distinct paths (symlinks to the samples)
        (links / f"cell{i:05d}.jpg").symlink_to(images[i % len(images)])
    out = tmp_path / "big.csv"
    command = [str(Path(sys.executable).with_name("cellsdk")), "predict", str(links), "--out", str(out),
               "--batch-size", "8", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 20_000):
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the job finished before it could be stopped (a very fast machine)")
    assert process.returncode == 143, err.decode()
    written = out.read_text().count("\n") - 1
    assert 0 < written < 1200
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert f"{written} from an earlier run" in finished.stdout
    paths = [line.split(",")[0] for line in out.read_text().splitlines()[1:]]
    assert paths == [str(links / f"cell{i:05d}.jpg") for i in range(1200)]


def test_relative_paths_become_the_absolute_names_rows_and_errors_use(classifier, folder, monkeypatch):
    monkeypatch.chdir(folder.parent)
    errors: list[str] = []
    run_job(classifier, ["images/eosinophil/zz_corrupt.jpg", "images/ig"], "r.csv", progress=False,
            on_error=lambda path, reason: errors.append(reason))
    rows = _rows(folder.parent / "r.csv", classifier)
    corrupt = str(folder / "eosinophil" / "zz_corrupt.jpg")
    assert rows[0]["path"] == corrupt and rows[0]["error"].startswith(corrupt) and errors[0].startswith(corrupt)
    assert rows[1]["path"] == str(folder / "ig")  # a folder given to run_job directly is not walked: its own error
