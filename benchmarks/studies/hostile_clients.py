"""``cellsdk serve`` under hostile clients: silent sockets, slowloris, a huge header, clients that hang up.

    python -m cellsdk.benchmarks.studies.hostile_clients [--silent 600] [--header-mb 64] [--out DIR] [-- SERVE ARGS]

Starts a real ``cellsdk serve`` on a loopback port and measures, from outside, what each attack does to it and to
a well-behaved client sending real requests at the same time:

- ``silent``: N connections that never send a byte; can a real client still get an answer, how fast, and how long
  do the silent sockets stay open;
- ``slowloris``: one connection sending its request head one byte per second; how long the server keeps it;
- ``big_header``: a request with one header of M MB; the answer, the server's memory growth, and the other
  client's slowest answer meanwhile;
- ``hang_ups``: clients that announce a 32-image body, send part of it and disconnect; what ``/metrics`` counts
  and how many lines the server prints.

Linux only (the server's memory is read from ``/proc``). Figures go to stdout, and with ``--out`` to
``hostile_clients.json`` / ``.md``. Nothing here is a pass/fail test: ``tests/serve/test_hostile.py`` is.
"""

from __future__ import annotations

import argparse
import json
import re
import select
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from cellsdk.platform.cpu import host_cpu
from cellsdk.serve.process import ServiceProcess, start_service

__all__ = ["measure"]

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "pbc_raw" / "ig" / "MMY_163947.jpg"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _request(port: int, raw: bytes, timeout: float = 30.0) -> tuple[int | None, float, bytes]:
    """Send ``raw`` on a fresh connection; (status or None, seconds, the whole answer)."""
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(raw)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
    except OSError:
        return None, time.perf_counter() - started, b""
    answer = b"".join(chunks)
    match = re.match(rb"HTTP/1\.1 (\d{3})", answer)
    return (int(match.group(1)) if match else None), time.perf_counter() - started, answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)content-length: *(\d+)", head)
    return match is None or len(body) >= int(match.group(1))


def _get(port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()


def _post_image(port: int) -> bytes:
    body = SAMPLE.read_bytes()
    return (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _closed_by_server(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)  # a silent client's socket turns readable only when the server answers or closes it


def silent_sockets(service: ServiceProcess, count: int, watch_s: float) -> dict[str, Any]:
    """``count`` connections that send nothing, then a real client; how long the silent ones last."""
    socks = []
    for _ in range(count):
        try:
            socks.append(socket.create_connection(("127.0.0.1", service.port), timeout=5))
        except OSError:
            break
    time.sleep(1.0)
    health = [_request(service.port, _get(service.port, "/healthz")) for _ in range(5)]
    predict = [_request(service.port, _post_image(service.port)) for _ in range(5)]
    started = time.monotonic()
    closed_at: dict[int, float] = {}
    while time.monotonic() - started < watch_s and len(closed_at) < len(socks):
        for index, sock in enumerate(socks):
            if index not in closed_at and _closed_by_server(sock):
                closed_at[index] = time.monotonic() - started + 1.0
        time.sleep(0.25)
    for sock in socks:
        sock.close()
    times = sorted(closed_at.values())
    return {"silent_sockets": len(socks), "real_client": {
        "healthz_status": [s for s, _, _ in health], "healthz_ms_median": round(statistics.median(
            t for _, t, _ in health) * 1e3, 1),
        "predict_status": [s for s, _, _ in predict], "predict_ms_median": round(statistics.median(
            t for _, t, _ in predict) * 1e3, 1),
        "answer_503_body": next((a.split(b"\r\n\r\n", 1)[1][:80].decode("latin-1") for s, _, a in health + predict
                                 if s == 503), None)},
        "closed_by_server": len(closed_at), "watched_s": watch_s,
        "first_closed_s": round(times[0], 1) if times else None, "last_closed_s": round(times[-1], 1) if times else None}


def slowloris(service: ServiceProcess, limit_s: float) -> dict[str, Any]:
    """A request head sent one byte per second: how long until the server closes the connection."""
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=5)
    started = time.monotonic()
    answer = b""
    for byte in head:
        if time.monotonic() - started > limit_s:
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        readable, _, _ = select.select([sock], [], [], 1.0)
        if readable:
            try:
                answer = sock.recv(65536)
            except OSError:
                pass
            break
    seconds = time.monotonic() - started
    sock.close()
    status = re.match(rb"HTTP/1\.1 (\d{3})", answer)
    return {"held_s": round(seconds, 1), "closed_by_server": seconds < limit_s, "limit_s": limit_s,
            "status": int(status.group(1)) if status else None}


def big_header(service: ServiceProcess, megabytes: int) -> dict[str, Any]:
    """One request with a ``megabytes`` MB header, while another client polls ``/healthz``."""
    before = _rss_mb(service.process.pid)
    peak = [before]
    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            _, seconds, _ = _request(service.port, _get(service.port, "/healthz"))
            latencies.append(seconds)
            peak.append(_rss_mb(service.process.pid))
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    raw = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (megabytes << 20) + b"\r\n\r\n"
    status, seconds, answer = _request(service.port, raw, timeout=60)
    time.sleep(0.5)
    done.set()
    poller.join()
    return {"header_mb": megabytes, "status": status, "answered_s": round(seconds, 2),
            "answer": answer.split(b"\r\n\r\n", 1)[-1][:120].decode("latin-1"),
            "server_rss_growth_mb": round(max(peak) - before, 1),
            "other_client_max_ms": round(max(latencies) * 1e3, 1) if latencies else None}


def hang_ups(service: ServiceProcess, clients: int) -> dict[str, Any]:
    """Clients announcing a 32-image multipart body who hang up half-way; what the server counts and prints."""
    body = SAMPLE.read_bytes() * 32
    lines_before = len(service.lines)
    for _ in range(clients):
        with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                         b"boundary=xyz\r\nContent-Length: " + str(len(body) + 200).encode() + b"\r\n\r\n--xyz\r\n"
                         b'Content-Disposition: form-data; name="files"; filename="a.jpg"\r\n'
                         b"Content-Type: image/jpeg\r\n\r\n" + body[: len(body) // 2])
            time.sleep(0.1)
    time.sleep(1.0)
    _, _, metrics = _request(service.port, _get(service.port, "/metrics"))
    errors = dict(re.findall(r'cellsdk_errors_total\{kind="([^"]+)"\} (\d+)', metrics.decode("latin-1")))
    printed = service.lines[lines_before:]
    return {"clients": clients, "errors_by_kind": {k: int(v) for k, v in errors.items()},
            "server_lines": len(printed), "tracebacks": sum("Traceback" in line for line in printed),
            "example_line": printed[0] if printed else None}


def measure(silent: int = 600, header_mb: int = 64, slow_limit_s: float = 40.0, watch_s: float = 30.0,
            serve_args: list[str] | None = None) -> dict[str, Any]:
    """All four scenarios, each against a fresh service (extra ``serve_args`` go to ``cellsdk serve``).

    Examples:
        >>> report = measure(silent=100, header_mb=8, slow_limit_s=15, watch_s=12)  # doctest: +SKIP
        >>> report["silent"]["real_client"]["predict_status"]  # doctest: +SKIP
        [200, 200, 200, 200, 200]
    """
    report: dict[str, Any] = {"machine": host_cpu().to_dict()}
    for name, run in (("silent", lambda s: silent_sockets(s, silent, watch_s)),
                      ("slowloris", lambda s: slowloris(s, slow_limit_s)),
                      ("big_header", lambda s: big_header(s, header_mb)),
                      ("hang_ups", lambda s: hang_ups(s, 14))):
        service = start_service(serve_args or [])
        try:
            report[name] = run(service)
        finally:
            service.stop()
        print(name, json.dumps(report[name]), flush=True)
    return report


def _markdown(report: dict[str, Any], label: str) -> str:
    s, slow, b, h = (report[k] for k in ("silent", "slowloris", "big_header", "hang_ups"))
    rc = s["real_client"]
    return "\n".join([
        f"### {label}", "",
        "| case | figure |", "|---|---|",
        f"| {s['silent_sockets']} silent sockets: real client /healthz | {rc['healthz_status']}, median "
        f"{rc['healthz_ms_median']} ms |",
        f"| … real client /v1/predict | {rc['predict_status']}, median {rc['predict_ms_median']} ms |",
        f"| … silent sockets closed by the server within {s['watched_s']:.0f} s | {s['closed_by_server']} (first "
        f"{s['first_closed_s']} s, last {s['last_closed_s']} s) |",
        f"| slowloris (1 byte/s head) held | {slow['held_s']} s ("
        f"{'closed by the server' if slow['closed_by_server'] else 'still open at the limit'}, status {slow['status']}) |",
        f"| {b['header_mb']} MB header | status {b['status']} in {b['answered_s']} s, server RSS "
        f"+{b['server_rss_growth_mb']} MB, other client's slowest /healthz {b['other_client_max_ms']} ms |",
        f"| {h['clients']} clients hanging up mid-body | errors {h['errors_by_kind']}, {h['server_lines']} server lines, "
        f"{h['tracebacks']} tracebacks |", ""])


def main() -> int:
    parser = argparse.ArgumentParser(prog="hostile_clients", description=__doc__.split("\n\n")[0])
    parser.add_argument("--silent", type=int, default=600)
    parser.add_argument("--header-mb", type=int, default=64)
    parser.add_argument("--slow-limit", type=float, default=40.0)
    parser.add_argument("--watch", type=float, default=30.0)
    parser.add_argument("--label", default="this build")
    parser.add_argument("--out", type=Path)
    parser.add_argument("serve_args", nargs="*")
    args = parser.parse_args()
    report = measure(args.silent, args.header_mb, args.slow_limit, args.watch, args.serve_args)
    report["label"] = args.label
    text = _markdown(report, args.label)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        name = "hostile_clients" + ("" if args.label == "this build" else "_" + re.sub(r"\W+", "_", args.label))
        (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / f"{name}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    from cellsdk.benchmarks._script import run_script

    run_script(main, prog="hostile_clients")
