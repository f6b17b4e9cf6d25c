"""The napari plugin: its manifest, the work without Qt, and the dock widget driven in a real (headless) viewer."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cellsdk import Classifier
from cellsdk.napari.cells import (
    boxes_from_points,
    boxes_from_shapes,
    classify_cells,
    differential_count,
    field_rgb,
    write_csv,
)

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "pbc_raw"


def field_of_cells() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A field: one full-resolution sample cell of each class side by side (2 rows x 4), the centres and truths."""
    tiles, truths = [], []
    for folder in sorted(p for p in SAMPLES.iterdir() if p.is_dir()):
        image = Image.open(sorted(folder.glob("*.jpg"))[0]).convert("RGB").resize((360, 363))
        tiles.append(np.asarray(image))
        truths.append(folder.name)
    rows = [np.concatenate(tiles[i:i + 4], axis=1) for i in (0, 4)]
    field = np.concatenate(rows, axis=0)
    centres = np.array([[363 * (i // 4) + 181.5, 360 * (i % 4) + 180.0] for i in range(8)])
    return field, centres, truths


def test_boxes_are_squares_around_points_or_the_bounding_boxes_of_shapes_clipped_to_the_image():
    assert boxes_from_points(np.array([[100.0, 100.0], [10.0, 10.0], [-50.0, 5.0]]), (200, 300), 40) == [
        (80, 80, 120, 120), (0, 0, 30, 30)]
    rectangle = np.array([[10.0, 20.0], [10.0, 80.0], [60.0, 80.0], [60.0, 20.0]])
    assert boxes_from_shapes([rectangle, np.array([[500.0, 500.0], [510.0, 510.0]])], (100, 100)) == [(20, 10, 80, 60)]


def test_a_grey_or_wide_layer_becomes_an_rgb_picture_and_a_volume_is_refused_with_the_reason():
    grey = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    picture = field_rgb(grey, rgb=False)
    assert picture.shape == (3, 4, 3) and picture.dtype == np.uint8 and picture.max() == 255
    assert field_rgb(np.zeros((2, 5, 6, 4), np.uint8), rgb=True, leading=(1,)).shape == (5, 6, 3)
    from cellsdk.errors import InvalidImageError

    with pytest.raises(InvalidImageError, match="2-D grey or RGB"):
        field_rgb(np.zeros((5, 6, 7)), rgb=True)


def test_a_field_of_cells_is_classified_counted_and_written_as_csv(tmp_path):
    field, centres, truths = field_of_cells()
    classifier = Classifier.load()
    results = classify_cells(classifier, field, boxes_from_points(centres, field.shape[:2], 360))
    assert [r.prediction.label for r in results] == truths  # one sample of each class, each right
    assert all(r.heatmap is not None and r.heatmap.shape == (r.box[3] - r.box[1], r.box[2] - r.box[0]) for r in results)
    count = differential_count(results, classifier.labels)
    assert count["cells"] == 8 and count["counted"] + count["flagged"] == 8
    assert sum(count["counts"].values()) == count["counted"]
    written = write_csv(tmp_path / "cells.csv", results, classifier.labels)
    rows = list(csv.reader(written.open()))
    assert rows[0][:2] == ["cell", "x"] and [row[7] for row in rows[1:9]] == truths
    assert ["class", "count", "percent"] in rows


def test_the_manifest_declares_the_widget_and_the_entry_point_finds_it():
    npe2 = pytest.importorskip("npe2", reason="napari's plugin engine (npe2) is not installed: "
                                               "pip install 'cellsdk[napari]'")
    from importlib.metadata import entry_points

    manifest = npe2.PluginManifest.from_distribution("cellsdk")
    assert [w.display_name for w in manifest.contributions.widgets] == ["Classify cells"]
    command = manifest.contributions.commands[0]
    assert command.python_name == "cellsdk.napari.widget:CellClassifierWidget"
    assert any(e.value == "cellsdk.napari:napari.yaml" for e in entry_points(group="napari.manifest"))


def _display_reason() -> str | None:
    """Why the viewer tests cannot run here (napari's fixtures need napari and pytest-qt, and a display)."""
    import importlib.util

    if importlib.util.find_spec("napari") is None or importlib.util.find_spec("pytestqt") is None:
        return "napari or pytest-qt is not installed: pip install 'cellsdk[napari,test]'"
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display: run the suite under xvfb-run (scripts/test.sh does where Xvfb is installed)"
    return None


@pytest.mark.skipif(_display_reason() is not None, reason=str(_display_reason()))
def test_the_dock_widget_classifies_marked_cells_in_a_viewer_and_saves_the_table(make_napari_viewer, tmp_path):
    from cellsdk.napari.widget import CellClassifierWidget

    viewer = make_napari_viewer()
    field, centres, truths = field_of_cells()
    viewer.add_image(field, name="field", rgb=True)
    viewer.add_points(centres, name="cells")
    widget = CellClassifierWidget(viewer)
    viewer.window.add_dock_widget(widget, name="cellsdk")
    assert widget.image_layer.currentText() == "field" and widget.marker_layer.currentText() == "cells"
    widget.cell_size.setValue(360)
    results = widget.classify()
    assert [r.prediction.label for r in results] == truths, widget.status.text()
    labelled = viewer.layers["cellsdk cells"]
    assert list(labelled.features["label"]) == truths and len(labelled.data) == 8
    assert viewer.layers["cellsdk explanation"].data.shape == field.shape[:2]
    assert len(viewer.layers["cellsdk boxes"].data) == 8
    assert widget.table.rowCount() == 8 and widget.table.item(0, 1).text() == truths[0]
    counted = {widget.counts.item(row, 0).text(): int(widget.counts.item(row, 1).text()) for row in range(8)}
    assert sum(counted.values()) + int(widget.counts.item(8, 1).text()) == 8
    assert "ms per cell" in widget.status.text()
    saved = widget.save_csv(tmp_path / "cells.csv")
    assert [row[7] for row in list(csv.reader(saved.open()))[1:9]] == truths

    # shapes mark cells too; and a layer with no cells on the image is an error in the status line, not a crash
    viewer.add_shapes([np.array([[0, 0], [363, 360]])], shape_type="rectangle", name="outlined")
    widget.marker_layer.setCurrentText("outlined")
    assert [r.prediction.label for r in widget.classify()] == truths[:1]
    cells = viewer.layers["cellsdk cells"]  # the result layers are updated in place, not stacked
    assert list(cells.features["label"]) == truths[:1] and len(cells.data) == 1
    assert len(viewer.layers["cellsdk boxes"].data) == 1
    assert [layer.name for layer in viewer.layers].count("cellsdk cells") == 1
    viewer.add_points(np.array([[5000.0, 5000.0]]), name="stray")
    widget.marker_layer.setCurrentText("stray")
    assert widget.classify() == [] and "marks no cell" in widget.status.text()
    viewer.add_points(name="empty")
    widget.marker_layer.setCurrentText("empty")
    assert widget.classify() == [] and "empty marks no cell" in widget.status.text()
    widget.marker_layer.setCurrentText("stray")
    viewer.layers["stray"].name = "renamed"  # the lists are stale until refreshed: a status line, then refreshed
    assert widget.classify() == [] and "no layer 'stray' any more" in widget.status.text()
    assert widget.marker_layer.findText("renamed") >= 0


@pytest.mark.skipif(_display_reason() is not None, reason=str(_display_reason()))
def test_a_single_cell_image_is_one_cell_and_a_bad_model_path_is_a_status_line(make_napari_viewer):
    from cellsdk.napari.widget import CellClassifierWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.asarray(Image.open(sorted((SAMPLES / "ig").glob("*.jpg"))[0])), name="one cell")
    widget = CellClassifierWidget(viewer)
    assert widget.marker_layer.currentText() == "(find the white cells)"  # no markers: the widget finds the cells
    widget.marker_layer.setCurrentText("(whole image: one cell)")
    [result] = widget.classify()
    assert result.prediction.label == "ig" and viewer.layers["cellsdk cells"].features["status"][0] == "ok"
    widget.model_path.setText("/no/such/model.onnx")
    assert widget.classify() == [] and widget.status.text().startswith("error: /no/such/model.onnx")


@pytest.mark.skipif(_display_reason() is not None, reason=str(_display_reason()))
def test_without_markers_the_widget_finds_the_white_cells_itself(make_napari_viewer):
    from cellsdk.napari.widget import CellClassifierWidget

    viewer = make_napari_viewer()
    field, _, truths = field_of_cells()
    viewer.add_image(field, name="field", rgb=True)
    widget = CellClassifierWidget(viewer)
    assert widget.marker_layer.currentText() == "(find the white cells)"
    results = widget.classify()
    found = sorted((r.box[1] // 363, r.box[0] // 360, r.prediction.label) for r in results)
    expected = sorted((i // 4, i % 4, truth) for i, truth in enumerate(truths) if truth != "platelet")
    assert found == expected, widget.status.text()  # one cell per tile, each its class; the platelet tile none
    assert len(viewer.layers["cellsdk boxes"].data) == len(expected)
    if os.environ.get("CELLSDK_SCREENSHOT_DIR"):  # how docs/guide/napari_find.png is refreshed
        viewer.window.add_dock_widget(widget, name="cellsdk")
        viewer.screenshot(str(Path(os.environ["CELLSDK_SCREENSHOT_DIR"]) / "napari_find.png"), canvas_only=False)
    viewer.add_image(np.full((300, 400, 3), 228, np.uint8), name="blank")
    widget.image_layer.setCurrentText("blank")
    assert widget.classify() == [] and "no white cell found" in widget.status.text()
