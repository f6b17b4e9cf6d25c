"""The Ray engine against a real local Ray cluster (``ray start --head`` on 127.0.0.1), row for row vs local."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cellsdk import Classifier
from cellsdk.batch.distributed import predict_files, ray_unavailable_reason
from cellsdk.batch.jobs import iter_inputs, run_job
from cellsdk.cli import predict_command
from cellsdk.errors import BackendNotInstalledError, ConfigError
from tests.conftest import RAW_SAMPLES

pytestmark = pytest.mark.skipif(ray_unavailable_reason() is not None, reason=str(ray_unavailable_reason()))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")  # session: built once even where xdist interleaves modules
def cluster():
    """A one-node Ray cluster started with `ray start --head` on 127.0.0.1 (token authentication on, as Ray 2.59+
    does by default), stopped with `ray stop` afterwards."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    port = _free_port()
    started = subprocess.run([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                              "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                             capture_output=True, text=True, timeout=180)
    try:
        if started.returncode != 0:
            pytest.fail(f"ray start failed: {started.stderr[-2000:]}")
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=180)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray") / "images"
    shutil.copytree(RAW_SAMPLES, root)
    (root / "eosinophil" / "zz_corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def test_ray_rows_are_the_local_engines_row_for_row(cluster, images, tmp_path):
    import pyarrow.parquet as pq

    summary = predict_files([images], tmp_path / "ray.parquet", address=cluster, actors=2, batch_size=4)
    local = run_job(Classifier.load(), iter_inputs([images]), tmp_path / "local.parquet", progress=False)
    ray_rows = pq.read_table(tmp_path / "ray.parquet").to_pylist()
    local_rows = pq.read_table(tmp_path / "local.parquet").to_pylist()
    assert len(ray_rows) == len(local_rows) == len(list(iter_inputs([images])))
    assert ray_rows == local_rows  # paths, labels, probabilities, guard verdicts and the error text, in order
    assert summary.per_class == local.per_class and summary.errors == local.errors == 1
    assert (tmp_path / "ray.parquet.ray.log").exists()  # Ray's console output, kept out of the terminal


def test_cli_engine_ray(cluster, tmp_path):
    out = tmp_path / "cli.parquet"
    result = CliRunner().invoke(predict_command, [str(RAW_SAMPLES), "--engine", "ray", "--address", cluster,
                                                  "--actors", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "total" in result.output and "Parquet folder" in result.output
    again = CliRunner().invoke(predict_command, [str(RAW_SAMPLES), "--engine", "ray", "--address", cluster,
                                                 "--out", str(out)])
    assert again.exit_code == 1 and "exists" in again.output and "--overwrite" in again.output


def test_missing_files_are_named_before_the_cluster_is_used(tmp_path):
    with pytest.raises(ConfigError, match="not files"):
        predict_files([RAW_SAMPLES / "ig" / "nope.jpg"], tmp_path / "x.parquet", address="127.0.0.1:1")
    with pytest.raises(ConfigError, match="mix of URIs and local paths"):
        predict_files(["s3://bucket/a.jpg", RAW_SAMPLES], tmp_path / "x.parquet", address="127.0.0.1:1")


def test_without_ray_the_error_names_the_extra(monkeypatch, tmp_path):
    import cellsdk.batch.distributed as distributed

    monkeypatch.setattr(distributed, "ray_unavailable_reason", lambda: "ray is not installed: pip install "
                                                                       "'cellsdk[ray]'")
    with pytest.raises(BackendNotInstalledError, match=r"cellsdk\[ray\]"):
        predict_files([RAW_SAMPLES], tmp_path / "x.parquet")
