"""``cellsdk serve --collect``: the review page in Chromium saves confirmed and corrected cells by label, and the
folder it fills is what ``cellsdk adapt`` takes."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service needs cellsdk[serve]")
httpx = pytest.importorskip("httpx", reason="the HTTP tests need httpx (cellsdk[test])")

from cellsdk import Classifier  # noqa: E402
from cellsdk.errors import ConfigError  # noqa: E402
from cellsdk.serve import ServeConfig  # noqa: E402
from cellsdk.serve.process import ServiceProcess  # noqa: E402
from tests.serve.test_process import IMAGES, RAW_SAMPLES, browser, start  # noqa: E402, F401 - browser: one Chromium per module

KEY = "review-key-0123456789abcdef"


def test_collect_needs_an_api_key(tmp_path):
    with pytest.raises(ConfigError, match="set an API key"):
        ServeConfig(collect_dir=str(tmp_path)).check()
    with pytest.raises(ConfigError, match="add --collect DIR"):
        ServeConfig(keep_asked=True, api_key=KEY).check()


@pytest.fixture(scope="module")
def collecting(tmp_path_factory) -> Iterator[tuple[ServiceProcess, Path]]:
    folder = tmp_path_factory.mktemp("review") / "collected"
    running = start("--collect", str(folder), "--keep-asked", "--api-key", KEY)
    yield running, folder
    assert running.stop() == 0, "\n".join(running.lines)


def test_the_review_api_saves_by_label_and_refuses_what_it_cannot_use(collecting):
    service, folder = collecting
    image = IMAGES[0]
    with httpx.Client(base_url=service.url, timeout=30) as client:
        assert client.post("/v1/review?label=monocyte", content=image.read_bytes()).status_code == 401
        auth = {"X-API-Key": KEY}
        bad_label = client.post("/v1/review?label=dragon", content=image.read_bytes(), headers=auth)
        assert bad_label.status_code == 400 and "not one of the model's labels" in bad_label.json()["detail"]
        not_image = client.post("/v1/review?label=monocyte", content=b"not an image", headers=auth)
        assert not_image.status_code == 400
        saved = client.post(f"/v1/review?label=monocyte&predicted=basophil&name={image.name}",
                            content=image.read_bytes(), headers=auth)
        assert saved.status_code == 200, saved.text
        assert saved.json()["decision"] == "corrected" and saved.json()["saved"].startswith("monocyte/")
        again = client.post("/v1/review?label=basophil&predicted=basophil", content=image.read_bytes(), headers=auth)
        assert again.json()["decision"] == "confirmed"  # the last decision counts: moved, not copied
        counts = client.get("/v1/review", headers=auth).json()["counts"]
    assert counts["basophil"] == 1 and counts["monocyte"] == 0
    assert not (folder / "monocyte").exists()  # an empty class folder would stop cellsdk adapt
    log = [json.loads(line) for line in (folder / "review.jsonl").read_text().splitlines()]
    assert [r["decision"] for r in log] == ["corrected", "confirmed"] and log[1]["moved_from"] == "monocyte"
    for path in folder.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def test_a_technician_reviews_by_keyboard_and_click_and_the_folder_adapts(collecting, browser, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    service, folder = collecting
    classifier = Classifier.load()
    cells = IMAGES[:4]
    predicted = [classifier.predict(p).label for p in cells]
    labels = list(classifier.labels)
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(service.url + "review")
    expect(page.locator("#key-section")).to_be_visible()
    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")
    expect(page.locator("#model")).to_contain_text("8 labels")
    page.set_input_files("#files", [str(p) for p in cells])

    def ready(index: int) -> None:
        expect(page.locator("#file-name")).to_have_text(cells[index].name)
        expect(page.locator("#current")).to_have_attribute("data-state", "ready", timeout=30_000)
        expect(page.locator("#predicted")).to_have_text(predicted[index])

    ready(0)
    page.keyboard.press("Enter")  # 1: confirm
    ready(1)
    corrected = next(label for label in labels if label != predicted[1])
    page.keyboard.press(str(labels.index(corrected) + 1))  # 2: correct with a digit
    ready(2)
    page.screenshot(path=str(tmp_path / "review_page.png"), full_page=True)
    clicked = next(label for label in reversed(labels) if label != predicted[2])
    page.locator(f'#labels button[data-label="{clicked}"]').click()  # 3: one click
    ready(3)
    page.keyboard.press("s")  # 4: skip
    expect(page.locator("#summary")).to_have_text("4 reviewed: 1 confirmed, 2 corrected, 1 skipped")
    expect(page.locator("#current")).to_be_hidden()
    assert errors == []
    page.close()
    if os.environ.get("CELLSDK_SCREENSHOT_DIR"):  # how docs/review_page.png is refreshed
        shutil.copy(tmp_path / "review_page.png", Path(os.environ["CELLSDK_SCREENSHOT_DIR"]) / "review_page.png")
    saved = sorted(p.parent.name for p in folder.glob("*/*") if p.suffix != ".jsonl" and p.parent.name != "unlabelled")
    assert saved == sorted([predicted[0], corrected, clicked])

    from click.testing import CliRunner

    from cellsdk.cli import cli
    from tests.conftest import SAMPLES, TINY_CHECKPOINT

    result = CliRunner().invoke(cli, ["adapt", str(TINY_CHECKPOINT), str(folder), "--out", str(tmp_path / "run"),
                                      "--replay", str(SAMPLES), "--replay-cropped", "--no-convert", "--epochs", "1",
                                      "--steps", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "best.safetensors").is_file()


def test_cells_asked_about_wait_in_the_pool_and_the_page_offers_them_most_useful_first(collecting, browser):  # noqa: F811
    from playwright.sync_api import expect

    service, folder = collecting
    for path in folder.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    auth = {"X-API-Key": KEY}
    cells = IMAGES[:3]
    with httpx.Client(base_url=service.url, timeout=60) as client:
        for path in [*cells, cells[0]]:  # asked twice: kept once
            assert client.post("/v1/predict", content=path.read_bytes(), headers=auth).status_code == 200
        kept = sorted((folder / "unlabelled").iterdir())
        assert len(kept) == 3 and {p.read_bytes() for p in kept} == {p.read_bytes() for p in cells}
        assert client.get("/v1/review/queue").status_code == 401
        queue = client.get("/v1/review/queue?n=10", headers=auth).json()
        assert queue["pool"] == 3 and queue["waiting"] == 3
        assert sorted(c["file"] for c in queue["cells"]) == [p.name for p in kept]
        first = queue["cells"][0]
        image = client.get(f"/v1/review/pool/{first['file']}", headers=auth)
        assert image.status_code == 200 and image.content == (folder / "unlabelled" / first["file"]).read_bytes()
        for bad in ("../review.jsonl", "0123456789abcdef.png", "..%2Freview.jsonl"):
            assert client.get(f"/v1/review/pool/{bad}", headers=auth).status_code == 404
        assert client.get("/v1/review", headers=auth).json()["pool"] == 3
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.add_init_script(f"sessionStorage.setItem('cellsdk-api-key', '{KEY}')")
    page.goto(service.url + "review")
    expect(page.locator("#pool-line")).to_be_visible()
    expect(page.locator("#file-name")).to_have_text(first["file"])  # the pool, in the suggested order
    expect(page.locator("#current")).to_have_attribute("data-state", "ready", timeout=30_000)
    expect(page.locator("#predicted")).to_have_text(first["predicted"])
    page.keyboard.press("Enter")
    expect(page.locator("#summary")).to_contain_text("1 reviewed: 1 confirmed")
    assert errors == []
    page.close()
    assert (folder / first["predicted"] / first["file"]).is_file()
    with httpx.Client(base_url=service.url, timeout=60) as client:
        left = client.get("/v1/review/queue", headers=auth).json()
    assert left["waiting"] == 2 and first["file"] not in [c["file"] for c in left["cells"]]


def test_post_count_answers_a_fields_white_cells_and_refuses_what_is_not_an_image(collecting):
    service, _ = collecting
    field = RAW_SAMPLES / "neutrophil" / "BNE_275283.jpg"
    with httpx.Client(base_url=service.url, timeout=60, headers={"X-API-Key": KEY}) as client:
        answer = client.post("/v1/count?name=field.jpg", content=field.read_bytes())
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert [cell["label"] for cell in body["cells"]] == ["neutrophil"] and body["counts"]["neutrophil"] == 1
        assert body["cells"][0]["crop"].startswith("data:image/jpeg;base64,") and body["ruler"]["measured"]
        empty = client.post("/v1/count", content=(RAW_SAMPLES / "platelet" / "PLATELET_140524.jpg").read_bytes())
        assert empty.json()["cells"] == [] and empty.json()["flagged"] == 0
        bad = client.post("/v1/count?name=notes.txt", content=b"not an image")
        assert bad.status_code == 400 and "notes.txt: not a recognised image file" in bad.json()["detail"]


def test_the_count_page_shows_boxes_and_cells_and_a_correction_lands_in_the_collect_folder(collecting, browser,  # noqa: F811
                                                                                          tmp_path):
    from playwright.sync_api import expect

    service, folder = collecting
    for path in folder.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    fields = [RAW_SAMPLES / "neutrophil" / "BNE_275283.jpg", RAW_SAMPLES / "lymphocyte" / "LY_118150.jpg",
              RAW_SAMPLES / "platelet" / "PLATELET_140524.jpg"]
    labels = list(Classifier.load().labels)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(service.url + "count")
    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")
    expect(page.locator("#model")).to_contain_text("8 classes")
    page.set_input_files("#fields", [str(p) for p in fields])
    expect(page.locator(".field[data-state=done]")).to_have_count(3, timeout=60_000)
    expect(page.locator(".cellcard")).to_have_count(2)
    expect(page.locator(".stage rect")).to_have_count(2)
    expect(page.locator('#counts tr[data-label="neutrophil"] td').nth(1)).to_have_text("1")
    expect(page.locator("#review")).to_be_visible()
    page.keyboard.press("Enter")  # the first cell (the neutrophil): confirmed
    expect(page.locator("#total")).to_have_text("2 cells · 1 reviewed")
    page.keyboard.press(str(labels.index("monocyte") + 1))  # the second (the lymphocyte): corrected to monocyte
    expect(page.locator("#summary")).to_have_text("3 fields: 2 white cells, 0 flagged, 2 reviewed (1 corrected)")
    expect(page.locator('#counts tr[data-label="monocyte"] td').nth(1)).to_have_text("1")
    expect(page.locator('#counts tr[data-label="lymphocyte"] td').nth(1)).to_have_text("0")
    page.screenshot(path=str(tmp_path / "count_page.png"), full_page=True)
    if os.environ.get("CELLSDK_SCREENSHOT_DIR"):  # how docs/count_page.png is refreshed
        shutil.copy(tmp_path / "count_page.png", Path(os.environ["CELLSDK_SCREENSHOT_DIR"]) / "count_page.png")
    assert errors == []
    page.close()
    saved = sorted(p.parent.name for p in folder.glob("*/*") if p.suffix != ".jsonl" and p.parent.name != "unlabelled")
    assert saved == ["monocyte", "neutrophil"]
