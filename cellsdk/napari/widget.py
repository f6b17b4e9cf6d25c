"""The napari dock widget: classify the cells of an image layer with any model ``Classifier.load`` reads.

Choose an image layer (one cell, or a field), optionally a points layer (a click on each cell) or a shapes layer
(a box around each), a model (the shipped one by default; a file, a conversion folder or a bioimage.io package),
and press *Classify*. The widget adds three layers — ``cellsdk cells`` (label, confidence and guard status at each
cell, coloured by class; flagged cells in a square), ``cellsdk boxes`` and ``cellsdk explanation`` (where the model
looked) — fills the results table, shows the differential count and saves both as CSV.

Examples:
    >>> widget = CellClassifierWidget(viewer)  # doctest: +SKIP
    >>> widget.classify()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cellsdk.errors import CellSDKError
from cellsdk.napari.cells import (
    CellResult,
    boxes_from_points,
    boxes_from_shapes,
    classify_cells,
    default_cell_size,
    differential_count,
    explanation_field,
    field_rgb,
    find_cells,
    write_csv,
)

__all__ = ["CellClassifierWidget"]

log = logging.getLogger("cellsdk")

_WHOLE_IMAGE = "(whole image: one cell)"
_FIND_CELLS = "(find the white cells)"
_TABLE = ("cell", "label", "confidence", "status", "x", "y")
#: one colour per class (tab10), RGBA
_PALETTE = np.array([[0.12, 0.47, 0.71, 1], [1.0, 0.5, 0.05, 1], [0.17, 0.63, 0.17, 1], [0.84, 0.15, 0.16, 1],
                     [0.58, 0.4, 0.74, 1], [0.55, 0.34, 0.29, 1], [0.89, 0.47, 0.76, 1], [0.5, 0.5, 0.5, 1],
                     [0.74, 0.74, 0.13, 1], [0.09, 0.75, 0.81, 1]])


class CellClassifierWidget(QWidget):
    """The dock widget (napari passes its viewer)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.classifier: Any = None
        self._loaded_from: str | None = None
        self.results: list[CellResult] = []

        self.model_path = QLineEdit()
        self.model_path.setPlaceholderText("the shipped blood-cell model")
        browse = QPushButton("…")
        browse.clicked.connect(self._browse)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_path)
        model_row.addWidget(browse)
        self.image_layer, self.marker_layer = QComboBox(), QComboBox()
        self.cell_size = QSpinBox()
        self.cell_size.setRange(0, 4096)
        self.cell_size.setSpecialValueText("model's crop")
        self.explain = QCheckBox("explain (class activation maps)")
        self.explain.setChecked(True)
        self.run_button, self.save_button = QPushButton("Classify"), QPushButton("Save CSV…")
        self.run_button.clicked.connect(self.classify)
        self.save_button.clicked.connect(self._save)
        self.save_button.setEnabled(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.table = QTableWidget(0, len(_TABLE))
        self.table.setHorizontalHeaderLabels(list(_TABLE))
        self.counts = QTableWidget(0, 3)
        self.counts.setHorizontalHeaderLabels(["class", "count", "%"])

        form = QFormLayout()
        form.addRow("model", model_row)
        form.addRow("image", self.image_layer)
        form.addRow("cells", self.marker_layer)
        form.addRow("cell size (px)", self.cell_size)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.explain)
        layout.addWidget(self.run_button)
        layout.addWidget(self.status)
        layout.addWidget(QLabel("cells"))
        layout.addWidget(self.table)
        layout.addWidget(QLabel("differential count (cells the guard passed)"))
        layout.addWidget(self.counts)
        layout.addWidget(self.save_button)

        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # --- layers ---------------------------------------------------------------------------------------------

    def _refresh_layers(self, *_: Any) -> None:
        from napari.layers import Image, Points, Shapes

        images = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)
                  and not layer.name.startswith("cellsdk ")]
        markers = [layer.name for layer in self.viewer.layers if isinstance(layer, (Points, Shapes))
                   and not layer.name.startswith("cellsdk ")]
        for combo, names in ((self.image_layer, images), (self.marker_layer, [_FIND_CELLS, _WHOLE_IMAGE, *markers])):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)
            elif combo is self.marker_layer and markers:
                combo.setCurrentText(markers[-1])
            combo.blockSignals(False)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "cellsdk model", "",
                                              "Models (*.onnx *.torchscript *.pt *.xml *.tflite *.pte *.zip *.yaml)")
        if path:
            self.model_path.setText(path)

    def _load(self) -> Any:
        from cellsdk import Classifier

        wanted = self.model_path.text().strip() or None
        if self.classifier is None or wanted != self._loaded_from:
            self.classifier = Classifier.load(wanted)
            self._loaded_from = wanted
        return self.classifier

    # --- the work ---------------------------------------------------------------------------------------------

    def classify(self) -> list[CellResult]:
        """Classify the chosen layer's cells; errors go to the status line (never a traceback in the viewer).

        Examples:
            >>> [r.prediction.label for r in CellClassifierWidget(viewer).classify()]  # doctest: +SKIP
            ['neutrophil', 'lymphocyte']
        """
        try:
            return self._classify()
        except (CellSDKError, OSError) as err:
            self.status.setText(f"error: {err}")
            log.warning("cellsdk: %s", err)
            return []

    def _classify(self) -> list[CellResult]:
        from napari.layers import Points, Shapes

        if not self.image_layer.currentText():
            raise CellSDKError("no image layer: open an image first")
        layer = self._layer(self.image_layer.currentText())
        classifier = self._load()
        steps = tuple(self.viewer.dims.current_step)  # the viewer's dims end with the layer's
        leading = steps[max(0, len(steps) - layer.ndim):max(0, len(steps) - 2)]
        picture = field_rgb(layer.data, rgb=bool(layer.rgb), leading=leading)
        shape = picture.shape[:2]
        marker_name = self.marker_layer.currentText()
        size = self.cell_size.value() or default_cell_size(classifier.metadata.preprocessing)
        crops = None
        if marker_name in ("", _FIND_CELLS):
            boxes, crops = find_cells(classifier, picture)
            if not boxes:
                raise CellSDKError("no white cell found in this image: mark the cells with a points or shapes layer, "
                                   "or choose the whole image as one cell")
        elif marker_name != _WHOLE_IMAGE:
            markers = self._layer(marker_name)
            if isinstance(markers, Points):
                boxes = boxes_from_points(self._to_image(markers, layer, markers.data), shape, size)
            elif isinstance(markers, Shapes):
                boxes = boxes_from_shapes([self._to_image(markers, layer, v) for v in markers.data], shape)
            else:
                raise CellSDKError(f"{marker_name}: not a points or shapes layer")
            if not boxes:
                raise CellSDKError(f"{marker_name} marks no cell inside the image: add points or shapes on cells")
        else:
            boxes = [(0, 0, shape[1], shape[0])]
        self.results = classify_cells(classifier, picture, boxes, explain=self.explain.isChecked(), crops=crops)
        self._show(layer, picture)
        return self.results

    def _layer(self, name: str) -> Any:
        if name not in self.viewer.layers:  # renamed or removed since the lists were filled
            self._refresh_layers()
            raise CellSDKError(f"there is no layer {name!r} any more: choose one from the lists again")
        return self.viewer.layers[name]

    def _ours(self, name: str, kind: type) -> Any:
        """The result layer ``name`` if it exists and is of ``kind``; one of that name that is not is removed."""
        if name not in self.viewer.layers:
            return None
        found = self.viewer.layers[name]
        if isinstance(found, kind):
            return found
        self.viewer.layers.remove(found)
        return None

    @staticmethod
    def _to_image(markers: Any, image: Any, coordinates: np.ndarray) -> np.ndarray:
        """Marker coordinates (their layer's data space) in the image layer's pixel (row, column) space."""
        coordinates = np.atleast_2d(np.asarray(coordinates, np.float64))
        if coordinates.size == 0:  # an empty points layer
            return np.zeros((0, 2))
        world = np.array([markers.data_to_world(point) for point in coordinates])
        pixels = np.array([image.world_to_data(point) for point in world])
        return pixels[:, -2:]

    def _show(self, layer: Any, picture: np.ndarray) -> None:
        from napari.layers import Image, Points, Shapes

        results, labels = self.results, self.classifier.labels
        centres = np.array([[(r.box[1] + r.box[3]) / 2, (r.box[0] + r.box[2]) / 2] for r in results])
        index = [r.prediction.index if r.prediction.index is not None else -1 for r in results]
        colours = np.array([_PALETTE[i % len(_PALETTE)] if i >= 0 else [1, 1, 1, 1] for i in index])
        text = [f"{r.prediction.label or 'rejected'} {r.prediction.confidence * 100:.0f}%"
                + ("" if r.prediction.status == "ok" else f" ({r.prediction.status.replace('_', ' ')})")
                for r in results]
        features = {"label": [r.prediction.label or "" for r in results],
                    "confidence": [float(r.prediction.confidence) for r in results],
                    "status": [r.prediction.status for r in results], "text": text}
        symbols = ["disc" if r.prediction.status == "ok" else "square" for r in results]
        transform = {"scale": layer.scale[-2:], "translate": layer.translate[-2:]}
        # the result layers are updated in place when they exist (removing and re-adding a layer costs ~0.3 s in
        # napari's canvas); a layer of the name that is not ours is replaced
        heat = explanation_field(results, picture.shape[:2]) if any(r.heatmap is not None for r in results) else None
        explanation = self._ours("cellsdk explanation", Image)
        if heat is None:
            if explanation is not None:
                self.viewer.layers.remove(explanation)
        elif explanation is not None:
            explanation.data = heat
            explanation.scale, explanation.translate = transform["scale"], transform["translate"]
        else:
            self.viewer.add_image(heat, name="cellsdk explanation", colormap="inferno", blending="additive",
                                  opacity=0.45, contrast_limits=(0, 1), **transform)
        rectangles = [np.array([[r.box[1], r.box[0]], [r.box[3], r.box[2]]]) for r in results]
        boxes = self._ours("cellsdk boxes", Shapes)
        if boxes is None:
            boxes = self.viewer.add_shapes(name="cellsdk boxes", face_color="transparent", edge_width=3, **transform)
        boxes.data = []
        boxes.scale, boxes.translate = transform["scale"], transform["translate"]
        boxes.add_rectangles(rectangles, edge_width=3, edge_color=colours, face_color="transparent")
        style = {"string": "{text}", "color": "black", "size": 11, "anchor": "upper_left", "translation": [-16, -8]}
        cells = self._ours("cellsdk cells", Points)
        if cells is None:
            self.viewer.add_points(centres, name="cellsdk cells", features=features, face_color=colours,
                                   symbol=symbols, size=18, border_color="white", text=style, **transform)
        else:
            cells.data = centres
            cells.scale, cells.translate = transform["scale"], transform["translate"]
            cells.features = features
            cells.face_color, cells.symbol, cells.text = colours, symbols, style
            cells.refresh()
        self._fill_tables(labels)
        spent = sum(r.seconds for r in results)
        flagged = sum(1 for r in results if r.prediction.status != "ok")
        self.status.setText(f"{len(results)} cell(s) in {spent * 1000:.0f} ms ({spent * 1000 / len(results):.1f} ms "
                            f"per cell); {flagged} flagged by the guard; {self.classifier.backend_name}, "
                            f"{Path(str(self.classifier.path)).name}")
        self.save_button.setEnabled(True)

    def _fill_tables(self, labels: tuple[str, ...]) -> None:
        self.table.setRowCount(len(self.results))
        for row, result in enumerate(self.results):
            values = result.row()
            for column, key in enumerate(_TABLE):
                value = values[key]
                shown = f"{value:.3f}" if key == "confidence" else (f"{value:.0f}" if key in ("x", "y") else str(value))
                self.table.setItem(row, column, QTableWidgetItem(shown))
        count = differential_count(self.results, labels)
        self.counts.setRowCount(len(labels) + 1)
        for row, label in enumerate(labels):
            for column, value in enumerate((label, str(count["counts"][label]), f"{count['percent'][label]:.1f}")):
                self.counts.setItem(row, column, QTableWidgetItem(value))
        for column, value in enumerate(("flagged (not counted)", str(count["flagged"]), "")):
            self.counts.setItem(len(labels), column, QTableWidgetItem(value))

    def save_csv(self, path: str | Path) -> Path:
        """Write the results table and the differential count to ``path`` (CSV).

        Examples:
            >>> widget.save_csv("cells.csv").name  # doctest: +SKIP
            'cells.csv'
        """
        if self.classifier is None:
            raise CellSDKError("nothing to save: classify first")
        written = write_csv(path, self.results, self.classifier.labels)
        self.status.setText(f"saved {written}")
        return written

    def _save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the results", "cells.csv", "CSV (*.csv)")
        if path:
            try:
                self.save_csv(path)
            except (CellSDKError, OSError) as err:
                self.status.setText(f"error: {err}")
