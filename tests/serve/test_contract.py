"""The OpenAPI document says exactly what the service does, with and without an API key: schemathesis
(``--checks all``, bounded examples) against a real ``cellsdk serve`` process, and the document's own promises."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service needs cellsdk[serve]")
httpx = pytest.importorskip("httpx", reason="the HTTP tests need httpx (cellsdk[test])")

from cellsdk.serve.process import ServiceProcess, start_service  # noqa: E402
from tests.conftest import REPO  # noqa: E402

KEY = "contract-test-key-0123456789"
CONFIG = Path(__file__).with_name("schemathesis.toml")
LABELS = ("basophil", "eosinophil", "erythroblast", "lymphocyte", "monocyte", "neutrophil", "platelet")


@pytest.fixture(scope="module")
def open_service() -> Iterator[ServiceProcess]:
    running = start_service([], cwd=REPO)
    yield running
    assert running.stop() == 0, "\n".join(running.lines)


@pytest.fixture(scope="module")
def keyed_service() -> Iterator[ServiceProcess]:
    running = start_service([], cwd=REPO, env={"CELLSDK_API_KEY": KEY})
    yield running
    assert running.stop() == 0, "\n".join(running.lines)


def _schemathesis() -> str:
    pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install 'cellsdk[test]')")
    return str(Path(sys.executable).with_name("st"))


def _run_schemathesis(service: ServiceProcess, *extra: str) -> str:
    command = [_schemathesis(), "--config-file", str(CONFIG), "run", f"{service.url}openapi.json", "--checks", "all",
               "--max-examples", "25", "--seed", "1", *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def test_schemathesis_finds_nothing_against_a_service_without_a_key(open_service: ServiceProcess) -> None:
    output = _run_schemathesis(open_service)
    assert "Selected: 6/6" in output and "failure" not in output.split("SUMMARY")[-1].lower()


def test_schemathesis_finds_nothing_against_a_service_with_a_key(keyed_service: ServiceProcess) -> None:
    # with the key, every check (ignored_auth included: it also sends requests without the key) must hold
    output = _run_schemathesis(keyed_service, "-H", f"X-API-Key: {KEY}")
    assert "Selected: 6/6" in output and "failure" not in output.split("SUMMARY")[-1].lower()


def test_the_document_declares_security_exactly_when_the_service_asks_for_a_key(
        open_service: ServiceProcess, keyed_service: ServiceProcess) -> None:
    plain = httpx.get(open_service.url + "openapi.json").json()
    assert not any("security" in op for ops in plain["paths"].values() for op in ops.values())
    assert "securitySchemes" not in plain.get("components", {})
    for path in ("v1/model", "metrics"):  # and the service indeed answers them without one
        assert httpx.get(open_service.url + path).status_code == 200
    keyed = httpx.get(keyed_service.url + "openapi.json")
    assert keyed.status_code == 200  # the document is open: it describes the API, not the model
    document = keyed.json()
    for path, method in (("/v1/predict", "post"), ("/v1/model", "get"), ("/metrics", "get")):
        operation = document["paths"][path][method]
        assert operation["security"] and "401" in operation["responses"]
        assert httpx.request(method, keyed_service.url + path.lstrip("/")).status_code == 401
    for path in ("/healthz", "/readyz"):
        assert "security" not in document["paths"][path]["get"]
    text = keyed.text
    assert "bloodmnist" not in text and ".onnx" not in text and not any(label in text for label in LABELS)
    assert all(label in httpx.get(keyed_service.url + "v1/model", headers={"X-API-Key": KEY}).text
               for label in LABELS)


def test_the_document_describes_the_bodies_and_errors_the_service_sends(open_service: ServiceProcess) -> None:
    document = httpx.get(open_service.url + "openapi.json").json()
    predict = document["paths"]["/v1/predict"]["post"]
    multipart = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert multipart["required"] == ["files"] and multipart["properties"]["files"]["minItems"] == 1
    empty = httpx.post(open_service.url + "v1/predict", files={"other": ("a.txt", b"x")})
    no_files = httpx.post(open_service.url + "v1/predict", content=b"--b--\r\n",
                          headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert empty.status_code == 400 and no_files.status_code == 400
    assert "422" not in predict["responses"] and "400" in predict["responses"]
    assert httpx.post(open_service.url + "v1/predict?top_k=0", content=b"x").status_code == 400
    assert document["components"]["schemas"]["Problem"]["required"] == ["type", "title", "status", "detail"]
