"""``cellsdk serve`` under hostile clients, over real sockets to a real process: huge heads, slow and silent
connections, stalled bodies, floods of idle sockets, clients that hang up, garbage instead of HTTP."""

from __future__ import annotations

import json
import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service needs cellsdk[serve]")
pytest.importorskip("uvicorn", reason="the service needs cellsdk[serve]")
pytest.importorskip("httptools", reason="the service needs cellsdk[serve]")

from cellsdk.serve.process import ServiceProcess, start_service
from tests.conftest import RAW_SAMPLES, REPO

SAMPLE = sorted(RAW_SAMPLES.glob("*/*.jpg"))[0].read_bytes()
MAX_CONNECTIONS = 40
TIMEOUT = 1.0  # the head and body timeouts the service under test runs with


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    running = start_service(["--header-timeout", str(TIMEOUT), "--body-timeout", str(TIMEOUT),
                             "--max-connections", str(MAX_CONNECTIONS)], cwd=REPO)
    yield running
    assert running.stop() == 0, "\n".join(running.lines)


def _connect(service: ServiceProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=10)


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _request(service: ServiceProcess, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with _connect(service) as sock:
        sock.sendall(raw)
        return _answer(sock)


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()


def _post_image() -> bytes:
    return (b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: " + str(len(SAMPLE)).encode() + b"\r\n\r\n" + SAMPLE)


def _metric(service: ServiceProcess, name: str, label: str) -> int:
    _, _, body = _request(service, _get("/metrics"))
    found = re.search(rf'^{name}\{{[a-z]+="{re.escape(label)}"\}} (\d+)$', body.decode(), re.M)
    return int(found.group(1)) if found else 0


def _is_problem(status: int, headers: dict[str, str], body: bytes, kind: str) -> None:
    document = json.loads(body)
    assert document["status"] == status and document["type"] == f"urn:cellsdk:problem:{kind}", document
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer" and "default-src 'none'" in headers["content-security-policy"]


def _server_rss_mb(service: ServiceProcess) -> float:
    status = Path(f"/proc/{service.process.pid}/status")
    if not status.exists():
        pytest.skip("the server's memory is read from /proc (Linux)")
    return int(re.search(r"VmRSS:\s+(\d+)", status.read_text()).group(1)) / 1024


def test_a_huge_request_head_gets_431_without_being_buffered(service: ServiceProcess) -> None:
    before = _server_rss_mb(service)
    status, headers, body = _request(service, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " +
                                     b"a" * (8 << 20) + b"\r\n\r\n")
    _is_problem(status, headers, body, "header-too-large")
    assert status == 431 and "32,768 bytes" in json.loads(body)["detail"]
    assert _server_rss_mb(service) - before < 16  # 8 MB were sent; at most one read past the limit was kept
    assert _request(service, _get("/healthz"))[0] == 200
    # a head just over the limit arrives in one read, whole: refused all the same, many headers or one long one
    many = b"".join(b"X-H%05d: %s\r\n" % (i, b"v" * 20) for i in range(1300))
    for head in (b"X-Long: " + b"a" * 40_000 + b"\r\n", many):
        status, headers, body = _request(service, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + head + b"\r\n")
        _is_problem(status, headers, body, "header-too-large")
    assert _metric(service, "cellsdk_errors_total", "header-too-large") >= 3
    under = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Ok: " + b"a" * 30_000 + b"\r\n\r\n"
    assert _request(service, under)[0] == 200  # a big but lawful head (cookies, long tokens) still passes


def test_a_slowloris_head_gets_408_and_a_silent_socket_is_closed(service: ServiceProcess) -> None:
    closed_before = _metric(service, "cellsdk_connections_closed_total", "header-timeout")
    with _connect(service) as slow, _connect(service) as silent:
        started = time.monotonic()
        head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100
        answer = b""
        for byte in head:  # one byte every 50 ms: the head never completes within the timeout
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                break
            if select.select([slow], [], [], 0.05)[0]:
                answer = slow.recv(65536)
                break
        held = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 ") and b"urn:cellsdk:problem:request-timeout" in answer
        assert TIMEOUT * 0.8 < held < TIMEOUT * 4
        assert select.select([silent], [], [], TIMEOUT * 4)[0] and silent.recv(1024) == b""  # closed, no answer
    assert _metric(service, "cellsdk_connections_closed_total", "header-timeout") >= closed_before + 2


def test_a_stalled_body_gets_408(service: ServiceProcess) -> None:
    with _connect(service) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 100000\r\n\r\n" + SAMPLE[:1000])
        started = time.monotonic()
        status, headers, body = _answer(sock)
    assert status == 408 and TIMEOUT * 0.8 < time.monotonic() - started < TIMEOUT * 4
    _is_problem(status, headers, body, "request-timeout")
    assert "stalled" in json.loads(body)["detail"]


def test_a_flood_of_silent_sockets_cannot_lock_out_a_real_request(service: ServiceProcess) -> None:
    evicted_before = _metric(service, "cellsdk_connections_closed_total", "evicted")
    flood = [_connect(service) for _ in range(3 * MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        statuses = [_request(service, _get("/healthz"))[0] for _ in range(3)]
        status, _, body = _request(service, _post_image())
        assert statuses == [200, 200, 200] and status == 200, body
        assert json.loads(body)["predictions"][0]["label"]
    finally:
        for sock in flood:
            sock.close()
    assert _metric(service, "cellsdk_connections_closed_total", "evicted") >= evicted_before + 2 * MAX_CONNECTIONS


def test_when_every_connection_is_busy_a_newcomer_gets_a_503_problem(service: ServiceProcess) -> None:
    busy = [_connect(service) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in busy:  # each has a request in progress (its body half sent): none may be evicted
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: 100000\r\n\r\n" + SAMPLE[:100])
        time.sleep(0.2)
        status, headers, body = _request(service, _get("/healthz"))
        _is_problem(status, headers, body, "busy")
        assert status == 503 and headers["retry-after"] == "1"
    finally:
        for sock in busy:
            sock.close()
    time.sleep(0.2)
    assert _request(service, _get("/healthz"))[0] == 200


def test_garbage_instead_of_http_gets_a_400_problem(service: ServiceProcess) -> None:
    status, headers, body = _request(service, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")
    _is_problem(status, headers, body, "bad-request")
    assert "TLS sent to this plain-HTTP port" in json.loads(body)["detail"]


def test_a_client_hanging_up_mid_body_is_counted_as_such_in_one_line(service: ServiceProcess) -> None:
    before = {kind: _metric(service, "cellsdk_errors_total", kind) for kind in ("client-disconnected", "internal")}
    lines_before = len(service.lines)
    body = SAMPLE * 32
    for _ in range(5):
        with _connect(service) as sock:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; "
                         b"boundary=xyz\r\nContent-Length: " + str(len(body) + 200).encode() + b"\r\n\r\n--xyz\r\n"
                         b'Content-Disposition: form-data; name="files"; filename="a.jpg"\r\n'
                         b"Content-Type: image/jpeg\r\n\r\n" + body[: len(body) // 2])
            time.sleep(0.05)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(service.lines) < lines_before + 5:
        time.sleep(0.05)
    assert _metric(service, "cellsdk_errors_total", "client-disconnected") == before["client-disconnected"] + 5
    assert _metric(service, "cellsdk_errors_total", "internal") == before["internal"]
    printed = service.lines[lines_before:]
    assert len(printed) == 5 and all("hung up during POST /v1/predict" in line for line in printed), printed
    _, _, metrics = _request(service, _get("/metrics"))
    assert 'cellsdk_requests_total{route="/v1/predict",code="499"}' in metrics.decode()
