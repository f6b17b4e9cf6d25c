"""The service's framework-free pieces: micro-batching, configuration, upload checks, metrics."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from contextlib import ExitStack

import pytest
from PIL import Image

from cellsdk.errors import ConfigError
from cellsdk.serve.batching import BusyError, MicroBatcher, ShuttingDownError
from cellsdk.serve.config import ServeConfig, is_loopback
from cellsdk.serve.problems import ApiError
from cellsdk.serve.prometheus import Metrics
from cellsdk.serve.uploads import check_and_decode, display_name, sniff


class Recorder:
    """An ``infer`` that doubles its inputs and records each call's size."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[list[int]] = []
        self.delay = delay

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        time.sleep(self.delay)
        return [x * 2 for x in items]


def submit_from_threads(batcher: MicroBatcher, groups: list[list[int]]) -> list[list[int]]:
    results: list[list[int] | None] = [None] * len(groups)
    start = threading.Barrier(len(groups))

    def one(i: int) -> None:
        start.wait()
        with batcher.admit(len(groups[i])) as ticket:
            results[i] = ticket.submit(groups[i]).result(timeout=10)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(groups))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results  # type: ignore[return-value]


def test_concurrent_requests_get_their_own_results() -> None:
    infer = Recorder()
    batcher = MicroBatcher(infer, max_batch=16, max_wait_ms=50, max_queue=64)
    try:
        groups = [[i] for i in range(8)] + [[100, 101, 102]]
        results = submit_from_threads(batcher, groups)
    finally:
        batcher.close()
    assert results == [[x * 2 for x in g] for g in groups]  # routed back to the right caller, in order
    assert sum(len(c) for c in infer.calls) == 11 and max(len(c) for c in infer.calls) <= 16
    assert any(c[i:i + 3] == [100, 101, 102] for c in infer.calls for i in range(len(c)))  # never split


def test_images_still_being_prepared_are_waited_for_and_then_share_one_call() -> None:
    infer = Recorder()
    batcher = MicroBatcher(infer, max_batch=16, max_wait_ms=10_000, max_queue=64)
    try:
        with ExitStack() as stack:
            tickets = [stack.enter_context(batcher.admit(n)) for n in (1, 2, 1)]
            assert batcher.preparing == 4
            first = tickets[0].submit([1])
            time.sleep(0.2)
            assert not first.done()  # three more admitted images are on their way
            second, third = tickets[1].submit([2, 3]), tickets[2].submit([4])
            assert (first.result(5), second.result(5), third.result(5)) == ([2], [4, 6], [8])
        assert infer.calls == [[1, 2, 3, 4]]  # one runtime call for the three requests
    finally:
        batcher.close()


def test_a_lone_request_does_not_wait() -> None:
    infer = Recorder()
    batcher = MicroBatcher(infer, max_batch=32, max_wait_ms=60_000, max_queue=64)
    try:
        with batcher.admit(1) as ticket:
            assert ticket.submit([5]).result(timeout=10) == [10]  # nothing else admitted: no reason to wait 60 s
    finally:
        batcher.close()


def test_the_wait_for_stragglers_is_bounded_and_a_failed_request_stops_it() -> None:
    infer = Recorder()
    batcher = MicroBatcher(infer, max_batch=32, max_wait_ms=100, max_queue=64)
    try:
        with batcher.admit(1) as ticket, batcher.admit(1):  # the second never submits (e.g. a bad image)
            assert ticket.submit([1]).result(timeout=10) == [2]  # after at most 100 ms
        assert batcher.preparing == 0 and batcher.admitted == 0
        with pytest.raises(ValueError), batcher.admit(3):
            raise ValueError("image 2 is corrupt")
        assert batcher.preparing == 0
    finally:
        batcher.close()


def test_a_full_batch_runs_without_waiting_for_the_deadline() -> None:
    infer = Recorder()
    batcher = MicroBatcher(infer, max_batch=4, max_wait_ms=10_000, max_queue=16)
    try:
        started = time.monotonic()
        with batcher.admit(8) as ticket:  # more admitted than submitted: only max_batch ends the wait
            assert ticket.submit([1, 2, 3, 4]).result(timeout=5) == [2, 4, 6, 8]
        assert time.monotonic() - started < 5  # not the 10 s deadline
    finally:
        batcher.close()


def test_max_batch_one_runs_every_input_alone_and_a_large_request_runs_whole() -> None:
    infer = Recorder()
    batcher = MicroBatcher(infer, max_batch=1, max_wait_ms=0, max_queue=64)
    try:
        submit_from_threads(batcher, [[1], [2], [3]])
        with batcher.admit(5) as ticket:
            assert ticket.submit([1, 2, 3, 4, 5]).result(timeout=5) == [2, 4, 6, 8, 10]
    finally:
        batcher.close()
    assert [len(c) for c in infer.calls[:3]] == [1, 1, 1]
    assert infer.calls[-1] == [1, 2, 3, 4, 5]  # one request's images are never split across calls


def test_the_queue_is_bounded_and_says_when_to_retry() -> None:
    batcher = MicroBatcher(Recorder(), max_batch=8, max_wait_ms=1, max_queue=10)
    try:
        with batcher.admit(8):
            assert batcher.admitted == 8
            with pytest.raises(BusyError) as caught, batcher.admit(3):
                pass
            assert caught.value.retry_after >= 1
            assert "busy" in str(caught.value) and "retry in" in str(caught.value)
            with batcher.admit(2):  # exactly full is fine
                pass
        assert batcher.admitted == 0  # released, also after the refusal
    finally:
        batcher.close()


def test_close_finishes_queued_work_then_refuses_new_work() -> None:
    infer = Recorder()
    batcher = MicroBatcher(infer, max_batch=64, max_wait_ms=10_000, max_queue=64)
    with batcher.admit(4) as ticket:  # two more are "being prepared": the batcher waits for them
        future = ticket.submit([1, 2])
        batcher.close(timeout=30)  # does not wait out the 10 s deadline, and answers the queued images
        assert future.result(timeout=0) == [2, 4]
    with pytest.raises(ShuttingDownError), batcher.admit(1):
        pass


def test_an_infer_failure_reaches_every_caller_of_that_call_and_the_batcher_goes_on() -> None:
    calls = []

    def infer(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("runtime exploded")
        return items

    batcher = MicroBatcher(infer, max_batch=8, max_wait_ms=1, max_queue=8)
    try:
        with batcher.admit(1), pytest.raises(RuntimeError, match="exploded"):
            batcher.submit([1]).result(timeout=5)
        with batcher.admit(1):
            assert batcher.submit([7]).result(timeout=5) == [7]
    finally:
        batcher.close()


def test_a_cancelled_caller_does_not_break_the_batcher() -> None:
    batcher = MicroBatcher(Recorder(delay=0.05), max_batch=8, max_wait_ms=200, max_queue=8)
    try:
        with batcher.admit(2) as ticket:
            first = ticket.submit([1])
            first.cancel()  # a client that hung up
            assert ticket.submit([2]).result(timeout=5) == [4]
    finally:
        batcher.close()


@pytest.mark.parametrize(("changes", "message"), [
    ({"host": "0.0.0.0"}, "set an API key"),
    ({"host": "192.168.1.5"}, "set an API key"),
    ({"api_key": "short"}, "at least 16"),
    ({"max_queue": 8, "max_images": 64}, "max_queue (8) must be at least max_images"),
    ({"max_batch": 0}, "max_batch must be"),
    ({"port": 70000}, "port must be"),
    ({"max_pixels": 10**12}, "max_pixels must be"),
    ({"cors_origins": ("lab.example.org",)}, "give a scheme"),
])
def test_config_refuses_unsafe_or_unusable_options(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ServeConfig(**changes).check()


def test_config_allows_network_binding_with_a_key() -> None:
    assert ServeConfig(host="0.0.0.0", api_key="k" * 24).check().host == "0.0.0.0"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("lab.example.org")


def _png(width: int, height: int, *, body: bytes | None = None) -> bytes:
    """A PNG header claiming ``width`` x ``height`` (a decompression bomb when large), with a tiny body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body or zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def _jpeg(size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 100, 150)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_uploads_are_sniffed_by_content_not_names() -> None:
    assert sniff(_jpeg()) == "JPEG" and sniff(_png(2, 2)) == "PNG"
    assert sniff(b"<html>") is None and sniff(b"%PDF-1.7") is None
    image = check_and_decode(_jpeg(), index=0, name="cell.txt", max_pixels=10_000)
    assert image.size == (40, 30)  # a JPEG called .txt is a JPEG


@pytest.mark.parametrize(("data", "kind", "status"), [
    (b"", "bad-image", 400),
    (b"just some text, named cell.jpg", "not-an-image", 415),
    (_jpeg()[:200], "bad-image", 400),  # truncated
    (_png(100_000, 100_000), "image-too-large", 413),  # a decompression bomb: refused from its header
])
def test_bad_uploads_get_the_right_problem(data: bytes, kind: str, status: int) -> None:
    with pytest.raises(ApiError) as caught:
        check_and_decode(data, index=2, name="cell.jpg", max_pixels=64_000_000)
    assert (caught.value.kind, caught.value.status) == (kind, status)
    doc = caught.value.document("/v1/predict")
    assert doc["detail"].startswith("image 3 (cell.jpg)") and doc["index"] == 2 and "\n" not in doc["detail"]


def test_pixel_limit_is_the_services_own() -> None:
    with pytest.raises(ApiError, match="more than this service's limit of 1,000"):
        check_and_decode(_jpeg((40, 30)), index=0, name=None, max_pixels=1_000)


def test_client_names_are_only_echoed_cleaned() -> None:
    assert display_name("../../etc/passwd") == "passwd"
    assert display_name("C:\\Users\\x\\cell 1.jpg") == "cell 1.jpg"
    assert display_name("a<script>.jpg") == "a_script_.jpg"
    assert len(display_name("x" * 1000) or "") == 120


def test_metrics_render_prometheus_text() -> None:
    depth = [3]
    metrics = Metrics({"cellsdk_queue_depth": ("Images waiting.", lambda: depth[0])})
    metrics.observe_request("/v1/predict", 200, 0.02)
    metrics.observe_request("/v1/predict", 415, 0.001)
    metrics.observe_error("not-an-image")
    for size in (1, 5, 32):
        metrics.observe_batch(size, 0.01)
    text = metrics.render()
    assert 'cellsdk_requests_total{route="/v1/predict",code="415"} 1' in text
    assert 'cellsdk_errors_total{kind="not-an-image"} 1' in text
    assert 'cellsdk_request_duration_seconds_bucket{route="/v1/predict",le="0.025"} 2' in text
    assert 'cellsdk_request_duration_seconds_count{route="/v1/predict"} 2' in text
    assert 'cellsdk_batch_size_bucket{le="8"} 2' in text and 'cellsdk_batch_size_bucket{le="+Inf"} 3' in text
    assert "cellsdk_images_total 38" in text and "cellsdk_queue_depth 3" in text
    for line in text.splitlines():  # every sample line is "name{labels} value"
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2


def test_a_missing_service_package_is_one_line_naming_the_extra() -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    hide = "import sys; sys.modules['fastapi'] = None; from cellsdk.cli import cli; cli()"
    done = subprocess.run([sys.executable, "-c", hide, "serve"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "FastAPI, which is not installed: pip install 'cellsdk[serve]'" in done.stderr
