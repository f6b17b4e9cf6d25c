"""Send ``cellsdk serve`` every kind of bad request and print what a client reads: status, problem type, detail.

Starts the real service (``cellsdk serve --port 0``, with an API key and small limits so each limit is reachable)
in its own process, sends each request over HTTP, prints a Markdown table and stops the service with SIGTERM.
Exit status 1 if any answer is not the expected status or not a problem document.

    python scripts/serve_bad_requests.py
"""

from __future__ import annotations

import io
import socket
import struct
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

from cellsdk.serve.process import start_service

REPO = Path(__file__).resolve().parents[1]
SAMPLE = sorted((REPO / "samples" / "pbc_raw").glob("*/*.jpg"))[0]
KEY = "lab-key-" + "x" * 24


def bomb() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30_000, 30_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def truncated() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 300), (120, 80, 160)).save(buffer, "JPEG")
    return buffer.getvalue()[:300]


def raw(port: int, data: bytes, *, then_wait: float = 0.0) -> httpx.Response:
    """Send bytes that no HTTP client library would (garbage, a head that never ends) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        time.sleep(then_wait)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
    return httpx.Response(int(lines[0].split()[1]), headers=headers, content=body)


def main() -> int:
    service = start_service(["--max-upload-mb", "2", "--max-images", "4", "--max-queue", "4",
                             "--header-timeout", "1"], env={"CELLSDK_API_KEY": KEY})
    url = service.url
    auth = {"X-API-Key": KEY}
    image = SAMPLE.read_bytes()
    cases = [
        ("a good image (raw body)", 200, {"content": image, "headers": auth}),
        ("body over the upload limit (2 MB, Content-Length)", 413,
         {"content": b"\xff\xd8\xff" + b"0" * 2_200_000, "headers": auth}),
        ("decompression bomb (PNG header: 30,000 x 30,000 px)", 413, {"content": bomb(), "headers": auth}),
        ("too many images (5 > --max-images 4)", 413,
         {"files": [("files", (f"{i}.jpg", image, "image/jpeg")) for i in range(5)], "headers": auth}),
        ("not an image (a PDF named cell.jpg, sent as image/jpeg)", 415,
         {"files": [("files", ("cell.jpg", b"%PDF-1.7 ...", "image/jpeg"))], "headers": auth}),
        ("empty body", 400, {"content": b"", "headers": auth}),
        ("empty file in the form", 400, {"files": [("files", ("cell.jpg", b"", "image/jpeg"))], "headers": auth}),
        ("truncated JPEG", 400, {"content": truncated(), "headers": auth}),
        ("wrong form field (image= instead of files=)", 400,
         {"files": [("image", ("cell.jpg", image, "image/jpeg"))], "headers": auth}),
        ("bad query (top_k=0)", 400, {"content": image, "params": {"top_k": 0}, "headers": auth}),
        ("no API key", 401, {"content": image}),
        ("wrong API key", 401, {"content": image, "headers": {"X-API-Key": "y" * 32}}),
    ]
    rows, bad = [], 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, expected, kwargs in cases:
            response = client.post("/v1/predict", **kwargs)
            rows.append(describe(name, expected, response))
            bad += not rows[-1][0]
        for name, expected, path in (("unknown path", 404, "/v2/predict"),):
            response = client.get(path)
            rows.append(describe(name, expected, response))
            bad += not rows[-1][0]
        for name, expected, response in (
                ("request head over 32 KiB (a 64 KiB header)", 431,
                 client.get("/healthz", headers={"X-Big": "a" * 65536})),
                ("a head that never ends (--header-timeout 1)", 408,
                 raw(service.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaa", then_wait=1.5)),
                ("not HTTP (a TLS hello sent to the plain-HTTP port)", 400,
                 raw(service.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"))):
            rows.append(describe(name, expected, response))
            bad += not rows[-1][0]

        def post(_: int) -> httpx.Response:  # 48 concurrent 4-image requests against --max-queue 4
            files = [("files", (f"{i}.jpg", image, "image/jpeg")) for i in range(4)]
            return client.post("/v1/predict", files=files, headers=auth)

        with ThreadPoolExecutor(48) as pool:
            answers = list(pool.map(post, range(48)))
        busy = [r for r in answers if r.status_code == 503]
        other = [r.status_code for r in answers if r.status_code not in (200, 503)]
        if busy:
            rows.append(describe(f"queue full (48 concurrent 4-image requests, --max-queue 4: {len(busy)} got 503, "
                                 f"{sum(r.status_code == 200 for r in answers)} got 200)", 503, busy[0]))
        else:
            rows.append((False, "queue full", "no 503 among 48 concurrent requests", "", ""))
        bad += not rows[-1][0] or bool(other)
    code = service.stop()
    print("| request | status | problem type | detail (what the client reads) |")
    print("|---|---|---|---|")
    for ok, name, status, kind, detail in rows:
        print(f"| {name} | {status}{'' if ok else ' (UNEXPECTED)'} | {kind} | {detail} |")
    print(f"\nservice stopped with SIGTERM: exit status {code}")
    return 1 if bad or code != 0 else 0


def describe(name: str, expected: int, response: httpx.Response) -> tuple[bool, str, str, str, str]:
    is_problem = response.headers.get("content-type", "").startswith("application/problem+json")
    if response.status_code == 200:
        return expected == 200, name, "200", "-", f"label {response.json()['predictions'][0]['label']}"
    doc = response.json() if is_problem else {}
    retry = f" (Retry-After: {response.headers['retry-after']})" if "retry-after" in response.headers else ""
    ok = response.status_code == expected and is_problem and "Traceback" not in response.text
    return ok, name, str(response.status_code), doc.get("type", response.headers.get("content-type", "")), \
        (doc.get("detail", response.text[:120]) + retry).replace("|", "/")


if __name__ == "__main__":
    sys.exit(main())
