"""``cellsdk serve`` as users run it: a real uvicorn process on a loopback port, driven over HTTP and in Chromium."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service needs cellsdk[serve]")
pytest.importorskip("uvicorn", reason="the service needs cellsdk[serve]")
httpx = pytest.importorskip("httpx", reason="the HTTP tests need httpx (cellsdk[test])")

from cellsdk import Classifier  # noqa: E402
from cellsdk.serve.process import ServiceProcess, start_service  # noqa: E402
from tests.conftest import RAW_SAMPLES, REPO  # noqa: E402

IMAGES = sorted(RAW_SAMPLES.glob("*/*.jpg"))
CELLSDK = [sys.executable, "-c", "from cellsdk.cli import cli; cli()"]


def start(*args: str, env: dict[str, str] | None = None) -> ServiceProcess:
    """``cellsdk serve --port 0 ARGS`` in its own process; returns once it announced its address."""
    return start_service(args, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    running = start("--max-wait-ms", "20")
    yield running
    assert running.stop() == 0, "\n".join(running.lines)


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.load()


def test_it_listens_on_loopback_only_by_default(service: ServiceProcess) -> None:
    assert service.url.startswith("http://127.0.0.1:")


def test_concurrent_clients_get_the_sdks_labels(service: ServiceProcess, classifier: Classifier) -> None:
    expected = {p.name: classifier.predict(p).label for p in IMAGES}

    def post(path: Path) -> tuple[str, str]:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            response = client.post("/v1/predict", files=[("files", (path.name, path.read_bytes(), "image/jpeg"))])
            response.raise_for_status()
            (prediction,) = response.json()["predictions"]
            return prediction["name"], prediction["label"]

    with ThreadPoolExecutor(8) as pool:
        answers = dict(pool.map(post, IMAGES * 2))
    assert answers == expected
    metrics = httpx.get(service.url + "metrics").text
    images = int(re.search(r"^cellsdk_images_total (\d+)$", metrics, re.M).group(1))
    batches = int(re.search(r"^cellsdk_batch_size_count (\d+)$", metrics, re.M).group(1))
    assert images >= 2 * len(IMAGES) and 1 <= batches <= images


def test_openapi_and_the_page_over_the_wire(service: ServiceProcess) -> None:
    assert "/v1/predict" in httpx.get(service.url + "openapi.json").json()["paths"]
    page = httpx.get(service.url)
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]


def test_sigterm_finishes_requests_in_flight_and_refuses_new_ones(classifier: Classifier, tmp_path: Path) -> None:
    from PIL import Image

    large = []  # 1,800 px originals: each takes this service tens of ms to decode, so work is left at the signal
    for path in IMAGES:
        large.append(tmp_path / path.name)
        Image.open(path).resize((1800, 1800)).save(large[-1], quality=90)
    running = start("--max-queue", "1024")
    port = running.port
    batches = [large for _ in range(6)]  # 6 requests of 16 images
    results: list[tuple[int, list[str]] | BaseException] = []

    def post(paths: list[Path]) -> None:
        try:
            files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
            response = httpx.post(running.url + "v1/predict", files=files, timeout=120)
            results.append((response.status_code, [p["label"] for p in response.json()["predictions"]]))
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            results.append(err)

    threads = [threading.Thread(target=post, args=(paths,)) for paths in batches]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until every request is in (admitted), and most of the work is ahead
        text = httpx.get(running.url + "metrics").text
        if re.search(r"^cellsdk_images_in_progress 96$", text, re.M):
            break
        time.sleep(0.02)
    else:
        pytest.fail("the requests were never all in progress:\n" + "\n".join(running.lines))
    running.process.send_signal(signal.SIGTERM)
    unanswered_at_signal = 6 - len(results)
    time.sleep(0.3)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # the listening socket is closed: new connections are refused
    for t in threads:
        t.join(120)
    assert unanswered_at_signal > 0  # the premise: requests were still in flight when the signal came
    assert running.process.wait(60) == 0, "\n".join(running.lines)
    expected = [classifier.predict(p).label for p in large]
    assert results == [(200, expected)] * 6, results


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--host", "0.0.0.0"], {}, "set an API key"),
    (["--api-key", "short"], {}, "at least 16"),
    (["--model", "no/such/model.onnx"], {}, "no such model file"),
    (["--max-queue", "4", "--max-images", "8"], {}, "max_queue (4) must be at least max_images"),
])
def test_bad_options_are_one_line_errors(args: list[str], env: dict[str, str], message: str) -> None:
    done = subprocess.run([*CELLSDK, "serve", "--port", "0", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr + done.stdout


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*CELLSDK, "serve", "--port", str(port)], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 1 and "already in use" in done.stderr and "Traceback" not in done.stderr


def test_the_key_comes_from_the_environment_and_guards_a_network_bind() -> None:
    key = "e" * 32
    running = start("--host", "0.0.0.0", env={"CELLSDK_API_KEY": key})
    try:
        url = f"http://127.0.0.1:{running.port}/"
        assert httpx.post(url + "v1/predict", content=IMAGES[0].read_bytes()).status_code == 401
        ok = httpx.post(url + "v1/predict", content=IMAGES[0].read_bytes(), headers={"X-API-Key": key})
        assert ok.status_code == 200
    finally:
        assert running.stop() == 0


# ---------------------------------------------------------------------- the web page in a real browser

def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def launch_chromium():
    """A headless Chromium under Playwright, closed when the generator ends; skips without Playwright or Chromium."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (cellsdk[test])")
    executable = chromium()
    if executable is None:
        pytest.skip("no Chromium installed (apt-get install chromium; scripts/setup.sh does it where it can)")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def browser():
    """Chromium for one module: a Playwright kept for the session keeps an event loop running in the process, and a
    later module's asyncio.run() there fails (tests/benchmarks/test_serve_load.py did, in CI)."""
    yield from launch_chromium()


def test_the_page_classifies_dropped_images_like_the_sdk(service: ServiceProcess, classifier: Classifier, browser,
                                                         tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("requestfailed", lambda request: errors.append(request.url))
    page.goto(service.url)
    expect(page.locator("#model")).to_contain_text("8 classes")
    page.set_input_files("#files", [str(p) for p in IMAGES])
    cards = page.locator(".card[data-state=done]")
    expect(cards).to_have_count(len(IMAGES), timeout=60_000)
    shown = page.eval_on_selector_all(".card", "cards => cards.map(c => [c.dataset.name, c.dataset.label, "
                                               "c.querySelector('.label').textContent, c.dataset.status])")
    assert shown == [[p.name, classifier.predict(p).label, classifier.predict(p).label, "ok"] for p in IMAGES]
    first = page.locator(".card").first
    expect(first.locator(".bars li")).to_have_count(3)
    expect(first.locator(".badge")).to_have_text("ok")
    expect(page.locator("#summary")).to_have_text(f"{len(IMAGES)} images: {len(IMAGES)} classified")
    page.screenshot(path=str(tmp_path / "serve_page.png"), full_page=True)
    if os.environ.get("CELLSDK_SCREENSHOT_DIR"):  # how docs/serve_page.png is refreshed
        shutil.copy(tmp_path / "serve_page.png", Path(os.environ["CELLSDK_SCREENSHOT_DIR"]) / "serve_page.png")
    assert (tmp_path / "serve_page.png").stat().st_size > 10_000
    assert errors == []
    page.close()


def test_the_page_shows_a_refused_file_and_works_by_keyboard_on_a_phone(service: ServiceProcess, browser,
                                                                        tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page.goto(service.url)
    expect(page.locator("#model")).to_contain_text("8 classes")
    for _ in range(10):  # the file picker is reachable with Tab
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.id") == "files":
            break
    else:
        pytest.fail("Tab never reached the file picker")
    fake = tmp_path / "cell.jpg"
    fake.write_text("not an image at all")
    page.set_input_files("#files", [str(fake), str(IMAGES[0])])
    expect(page.locator(".card[data-state=error]")).to_have_count(1, timeout=30_000)
    expect(page.locator(".card[data-state=done]")).to_have_count(1, timeout=30_000)
    expect(page.locator(".card[data-state=error] .reasons")).to_contain_text("not an image")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling on a phone
    page.close()


def test_the_heat_map_toggle_overlays_the_services_explanations(service: ServiceProcess, browser, tmp_path) -> None:
    """The shipped model explains (capabilities.explanations): the page asks for heat maps with each prediction
    and the toggle lays each image's map over its thumbnail."""
    from playwright.sync_api import expect

    info = httpx.get(service.url + "v1/model").json()
    assert info["capabilities"]["explanations"] is True
    page = browser.new_page()
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url) if "/v1/predict" in request.url else None)
    page.goto(service.url)
    toggle = page.locator("#heat-toggle")
    expect(page.locator("#heat-toggle-label")).to_be_visible()
    page.set_input_files("#files", [str(p) for p in IMAGES[:3]])
    expect(page.locator(".card[data-state=done]")).to_have_count(3, timeout=60_000)
    assert asked and all("explain=true" in url for url in asked)
    overlays = page.locator(".card .heat")
    expect(overlays.first).to_be_hidden()
    toggle.check()
    for i in range(3):
        expect(overlays.nth(i)).to_be_visible()
        assert overlays.nth(i).get_attribute("src").startswith("data:image/png;base64,")
        assert "where the model looked" in overlays.nth(i).get_attribute("alt")
    page.screenshot(path=str(tmp_path / "serve_page_heatmaps.png"), full_page=True)
    if os.environ.get("CELLSDK_SCREENSHOT_DIR"):
        shutil.copy(tmp_path / "serve_page_heatmaps.png",
                    Path(os.environ["CELLSDK_SCREENSHOT_DIR"]) / "serve_page_heatmaps.png")
    toggle.uncheck()
    expect(overlays.first).to_be_hidden()
    page.close()


def test_the_bad_request_table_script_gets_every_expected_answer() -> None:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "serve_bad_requests.py")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "UNEXPECTED" not in done.stdout and "| queue full" in done.stdout and "exit status 0" in done.stdout


def test_the_api_documentation_works_offline_under_its_csp(service: ServiceProcess, browser) -> None:
    """/docs is Swagger UI from the package: every file from the service itself, nothing refused by the CSP."""
    page = browser.new_page()
    problems: list[str] = []
    requested: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda err: problems.append(str(err)))
    page.on("request", lambda request: requested.append(request.url))
    page.goto(service.url + "docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(n => n.textContent)")
    assert paths == ["/v1/predict", "/v1/model", "/healthz", "/readyz", "/metrics", "/v1/count"]
    page.locator(".opblock-summary").first.click()
    page.wait_for_selector(".opblock-section-request-body", timeout=10_000)
    assert requested and all(url.startswith(service.url) or url.startswith("data:") for url in requested), requested
    assert problems == []
    assert httpx.get(service.url + "redoc").json()["detail"].startswith("ReDoc is not served")
    page.close()
