"""The REST service through the real HTTP stack in-process (Starlette's test client, lifespan included)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the service needs cellsdk[serve]")
pytest.importorskip("httpx", reason="the test client needs httpx (cellsdk[test])")

from starlette.testclient import TestClient

from cellsdk import Classifier
from cellsdk.serve import ServeConfig, create_app
from tests.conftest import RAW_SAMPLES
from tests.serve.test_batching import _jpeg, _png

IMAGES = sorted(RAW_SAMPLES.glob("*/*.jpg"))
KEY = "k" * 32


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.load()


@pytest.fixture(scope="module")
def client(classifier: Classifier):
    with TestClient(create_app(classifier, ServeConfig(max_images=8, max_queue=16, max_upload_bytes=2_000_000))) \
            as c:
        yield c


def files(paths: list[Path], field: str = "files") -> list:
    return [(field, (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def assert_problem(response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    doc = response.json()
    assert doc["type"] == f"urn:cellsdk:problem:{kind}" and doc["status"] == status and doc["title"]
    assert doc["detail"] and "\n" not in doc["detail"] and "Traceback" not in response.text
    assert response.headers["x-content-type-options"] == "nosniff"  # every answer, errors of every origin included
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert response.headers.get_list("x-frame-options") == ["DENY"]  # once, however many layers add it
    return doc


def test_several_images_get_the_sdks_answers_in_request_order(client, classifier) -> None:
    chosen = IMAGES[::2][:8]
    response = client.post("/v1/predict", files=files(chosen))
    assert response.status_code == 200
    body = response.json()
    assert body["model"]["name"] == classifier.path.name and len(body["model"]["sha256"]) == 64
    predictions = body["predictions"]
    assert [p["name"] for p in predictions] == [p.name for p in chosen]
    for path, got in zip(chosen, predictions, strict=True):
        expected = classifier.predict(path)
        assert got["label"] == expected.label and got["index"] == expected.index
        assert got["status"] == expected.status and got["reasons"] == list(expected.reasons)
        assert got["confidence"] == pytest.approx(expected.confidence, abs=1e-6)
        assert got["ood_score"] == pytest.approx(expected.ood_score, abs=1e-6)
        assert list(got["probabilities"]) == list(classifier.labels)
        assert [k["label"] for k in got["top_k"]] == [label for label, _ in expected.top_k]


def test_a_raw_body_is_one_image_and_top_k_is_honoured(client, classifier) -> None:
    response = client.post("/v1/predict?top_k=5", content=IMAGES[0].read_bytes(),
                           headers={"content-type": "application/octet-stream"})
    assert response.status_code == 200
    (prediction,) = response.json()["predictions"]
    assert prediction["name"] is None and len(prediction["top_k"]) == 5
    assert prediction["label"] == classifier.predict(IMAGES[0]).label


def test_the_content_type_is_not_trusted(client) -> None:
    png = io.BytesIO()
    Image.fromarray(np.asarray(Image.open(IMAGES[0]))).save(png, "PNG")
    response = client.post("/v1/predict", files=[("files", ("cell.gif", png.getvalue(), "text/plain"))])
    assert response.status_code == 200  # a PNG called .gif, sent as text, is a PNG


def test_a_raw_body_is_sniffed_whatever_its_declared_type(client) -> None:
    for declared in ("application/x-www-form-urlencoded", "text/plain", "application/json"):  # curl -d, urllib
        response = client.post("/v1/predict", content=IMAGES[0].read_bytes(), headers={"content-type": declared})
        assert response.status_code == 200, declared


def test_model_health_metrics_and_docs(client, classifier) -> None:
    model = client.get("/v1/model").json()
    assert model["labels"] == list(classifier.labels)
    assert model["verification"]["status"] == classifier.verification.status
    assert model["metadata"]["labels"] == list(classifier.labels)
    assert model["capabilities"]["ood_guard"] is True and model["cpu"]["cpu_class"]
    check = model["self_check"]  # the shipped model's self-check (or gate record) on this machine
    assert check["status"] == classifier.self_check.status == "passed" and check["summary"]
    assert check["machine"]["runtime_version"] and check["machine"]["precision"] == "int8"
    assert "base64" not in json.dumps(model["metadata"])  # the test vectors' bytes are not served
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    client.post("/v1/predict", content=IMAGES[1].read_bytes())
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    for name in ("cellsdk_requests_total", "cellsdk_errors_total", "cellsdk_request_duration_seconds_bucket",
                 "cellsdk_batch_size_bucket", "cellsdk_queue_depth", "cellsdk_images_in_progress"):
        assert name in text
    assert 'cellsdk_requests_total{route="/v1/predict",code="200"}' in text
    schema = client.get("/openapi.json").json()
    assert "/v1/predict" in schema["paths"] and "multipart/form-data" in json.dumps(schema["paths"]["/v1/predict"])
    assert client.get("/docs").status_code == 200


def test_the_page_is_served_by_the_app_with_a_strict_policy(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<title>cellsdk" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from a CDN
    for asset in ("/static/app.js", "/static/app.css"):
        response = client.get(asset)
        assert response.status_code == 200 and "https://" not in response.text
    assert page.headers["x-content-type-options"] == "nosniff"


def test_cors_is_off_unless_configured(client, classifier) -> None:
    origin = {"Origin": "https://lab.example.org"}
    assert "access-control-allow-origin" not in client.get("/healthz", headers=origin).headers
    app = create_app(classifier, ServeConfig(cors_origins=("https://lab.example.org",)))
    with TestClient(app) as allowed:
        response = allowed.get("/healthz", headers=origin)
        assert response.headers["access-control-allow-origin"] == "https://lab.example.org"
        other = allowed.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def bomb() -> bytes:
    return _png(30_000, 30_000)  # 900 MP in a few hundred bytes


@pytest.mark.parametrize(("name", "request_kwargs", "status", "kind"), [
    ("oversized (Content-Length)", {"content": b"\xff\xd8\xff" + b"0" * 2_100_000}, 413, "too-large"),
    ("decompression bomb", {"content": bomb()}, 413, "image-too-large"),
    ("too many images", {"files": files(IMAGES[:9])}, 413, "too-many-images"),
    ("not an image", {"files": [("files", ("cell.jpg", b"%PDF-1.7 not a cell", "image/jpeg"))]}, 415,
     "not-an-image"),
    ("url-encoded form", {"data": {"files": "cell.jpg"}}, 415, "not-an-image"),
    ("empty body", {"content": b""}, 400, "bad-request"),
    ("empty upload", {"files": [("files", ("cell.jpg", b"", "image/jpeg"))]}, 400, "bad-image"),
    ("truncated image", {"content": _jpeg((300, 300))[:300]}, 400, "bad-image"),
    ("wrong field", {"files": files(IMAGES[:1], field="image")}, 400, "bad-request"),
    ("text in the image field", {"files": [("files", (None, "cell.jpg"))], "data": {"x": "1"}}, 400, "bad-request"),
    ("bad top_k", {"params": {"top_k": "zero"}, "content": _jpeg()}, 400, "bad-request"),
])
def test_bad_requests_get_problem_documents(client, name, request_kwargs, status, kind) -> None:
    assert_problem(client.post("/v1/predict", **request_kwargs), status, kind)


def test_a_body_without_content_length_is_cut_at_the_limit(client) -> None:
    def chunks():
        for _ in range(40):
            yield b"\xff\xd8\xff" + b"0" * 100_000

    assert_problem(client.post("/v1/predict", content=chunks()), 413, "too-large")


def test_the_failing_image_is_named_and_nothing_is_half_answered(client) -> None:
    sent = [*files(IMAGES[:2]), ("files", ("notes.txt", b"hello", "text/plain"))]
    doc = assert_problem(client.post("/v1/predict", files=sent), 415, "not-an-image")
    assert doc["index"] == 2 and doc["name"] == "notes.txt" and doc["detail"].startswith("image 3 (notes.txt)")


def test_unknown_paths_and_methods_are_problems_too(client) -> None:
    assert_problem(client.get("/v2/predict"), 404, "not-found")
    assert_problem(client.get("/v1/predict"), 405, "method-not-allowed")


def test_a_full_queue_answers_503_with_retry_after(client) -> None:
    batcher = client.app.state.cellsdk.batcher
    with batcher.admit(batcher.max_queue):  # every slot taken, as by many slow requests
        response = client.post("/v1/predict", content=IMAGES[0].read_bytes())
    doc = assert_problem(response, 503, "busy")
    assert int(response.headers["retry-after"]) >= 1 and "busy" in doc["detail"]
    assert client.post("/v1/predict", content=IMAGES[0].read_bytes()).status_code == 200  # and recovers


def test_draining_fails_readiness_and_a_closed_batcher_refuses_work(classifier) -> None:
    with TestClient(create_app(classifier)) as c:
        state = c.app.state.cellsdk
        state.draining = True  # SIGTERM: the server takes no new connection; what got in is answered
        assert_problem(c.get("/readyz"), 503, "shutting-down")
        assert c.post("/v1/predict", content=IMAGES[0].read_bytes()).status_code == 200
        state.batcher.close()
        response = c.post("/v1/predict", content=IMAGES[0].read_bytes())
        assert_problem(response, 503, "shutting-down")
        assert response.headers["retry-after"] == "1"
        assert c.get("/healthz").status_code == 200


def test_an_internal_failure_is_a_500_problem_without_a_traceback(classifier, monkeypatch) -> None:
    app = create_app(classifier)
    with TestClient(app, raise_server_exceptions=False) as c:
        def broken(prepared):
            raise RuntimeError("secret internal state /home/user/model")

        monkeypatch.setattr(app.state.cellsdk, "infer", broken)
        app.state.cellsdk.batcher._infer = broken
        response = c.post("/v1/predict", content=IMAGES[0].read_bytes())
        doc = assert_problem(response, 500, "internal")
        assert "secret" not in response.text and "RuntimeError" in doc["detail"]


def test_the_api_key_is_required_when_configured(classifier) -> None:
    with TestClient(create_app(classifier, ServeConfig(api_key=KEY))) as c:
        body = IMAGES[0].read_bytes()
        missing = c.post("/v1/predict", content=body)
        assert_problem(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert_problem(c.post("/v1/predict", content=body, headers={"X-API-Key": "x" * 32}), 401, "unauthorized")
        assert_problem(c.get("/metrics"), 401, "unauthorized")
        assert_problem(c.get("/v1/model"), 401, "unauthorized")
        assert c.post("/v1/predict", content=body, headers={"X-API-Key": KEY}).status_code == 200
        assert c.post("/v1/predict", content=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200  # probes and the page
        assert c.get("/v1/model").status_code == 401


def test_classifier_options_carry_through(classifier) -> None:
    rejecting = Classifier.load(ood="reject")
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    with TestClient(create_app(rejecting)) as c:
        (prediction,) = c.post("/v1/predict", content=buffer.getvalue()).json()["predictions"]
    expected = rejecting.predict(noise)
    assert prediction["status"] == expected.status != "ok"
    assert prediction["label"] is None and prediction["top_k"] == [] and prediction["reasons"]


def test_uploads_are_never_spooled_to_disk(client, monkeypatch) -> None:
    import tempfile

    created = []
    original = tempfile.SpooledTemporaryFile

    class Watched(original):  # type: ignore[misc, valid-type]
        def rollover(self) -> None:  # what moves a spooled upload from memory to a file on disk
            created.append(self)
            super().rollover()

    monkeypatch.setattr("starlette.formparsers.SpooledTemporaryFile", Watched)
    large = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (700, 700, 3), dtype=np.uint8)).save(large, "PNG")
    assert len(large.getvalue()) > 1024 * 1024  # over Starlette's default 1 MB spool limit
    response = client.post("/v1/predict", files=[("files", ("big.png", large.getvalue(), "image/png"))])
    assert response.status_code == 200 and created == []


@pytest.mark.parametrize("fmt", ["onnxruntime", "openvino", "torchscript", "folder"])
def test_any_model_classifier_load_reads_is_served(fmt, artefacts, converted) -> None:
    """Not only the shipped model: every format that runs here, and a cellsdk-convert folder (its best artefact)."""
    from tests.conftest import SAMPLES

    if fmt == "folder":
        path = converted.out_dir
    elif fmt in artefacts:
        path = artefacts[fmt]
    else:
        pytest.skip(f"{fmt} is not installed")
    options = {"precision": "f32"} if fmt == "openvino" else {}
    model = Classifier.load(path, device="cpu", **options)
    crops = sorted((SAMPLES / "test").glob("*/*.jpg"))[:6]
    with TestClient(create_app(model)) as c:
        response = c.post("/v1/predict", files=files(crops))
        info = c.get("/v1/model").json()
    assert response.status_code == 200, response.text
    assert [p["label"] for p in response.json()["predictions"]] == [model.predict(p).label for p in crops]
    assert info["labels"] == list(model.labels) and info["name"] == model.path.name


def test_explain_adds_each_images_heat_map_aligned_with_the_upload(client, classifier) -> None:
    import base64

    chosen = IMAGES[:3]
    response = client.post("/v1/predict?explain=true", files=files(chosen))
    assert response.status_code == 200, response.text
    for path, got in zip(chosen, response.json()["predictions"], strict=True):
        expected = classifier.explain(path)
        assert got["label"] == expected.prediction.label == got["explanation"]["target"]
        assert got["explanation"]["box"] == list(expected.box) and got["explanation"]["method"] == "cam"
        peak = np.unravel_index(int(np.argmax(expected.heatmap)), expected.heatmap.shape)
        assert got["explanation"]["peak"] == [int(peak[1]), int(peak[0])]
        assert got["heatmap"].startswith("data:image/png;base64,")
        layer = Image.open(io.BytesIO(base64.b64decode(got["heatmap"].split(",", 1)[1])))
        raw = Image.open(path)
        assert max(layer.size) <= 256 and abs(layer.width / layer.height - raw.width / raw.height) < 0.02
    plain = client.post("/v1/predict", files=files(chosen[:1])).json()["predictions"][0]
    assert "heatmap" not in plain and "explanation" not in plain
    assert client.get("/v1/model").json()["capabilities"]["explanations"] is True


def test_explain_on_a_model_without_maps_is_a_problem_document(tmp_path) -> None:
    import warnings

    from tests.test_explain import _blob_image, _export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = Classifier.load(_export(tmp_path, None, outputs=("logits",)))
    with TestClient(create_app(plain, ServeConfig())) as c:
        assert c.get("/v1/model").json()["capabilities"]["explanations"] is False
        buffer = io.BytesIO()
        _blob_image((64, 64), (20, 20)).save(buffer, "PNG")
        doc = assert_problem(c.post("/v1/predict?explain=true", content=buffer.getvalue()), 400,
                             "explanations-unavailable")
        assert "class-activation-map" in doc["detail"]
        assert c.post("/v1/predict", content=buffer.getvalue()).status_code == 200
