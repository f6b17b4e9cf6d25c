"""The napari widget's screenshot for the docs (docs/guide/napari.png) and its per-cell time.

A field of one full-resolution sample cell per class (samples/pbc_raw, 2 rows x 4), a points layer marking each,
the cellsdk dock widget classifying them with the shipped model; the viewer's screenshot (window and dock) is saved
and the time per cell printed. Needs a display: run it under xvfb-run.

Usage: xvfb-run -a .venv/bin/python scripts/napari_screenshot.py [OUT.png]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path) -> None:
    import napari

    from cellsdk.napari.widget import CellClassifierWidget
    from cellsdk.platform.cpu import host_cpu

    tiles = [np.asarray(Image.open(sorted(folder.glob("*.jpg"))[0]).convert("RGB").resize((360, 363)))
             for folder in sorted(p for p in (ROOT / "samples" / "pbc_raw").iterdir() if p.is_dir())]
    field = np.concatenate([np.concatenate(tiles[i:i + 4], axis=1) for i in (0, 4)], axis=0)
    centres = np.array([[363 * (i // 4) + 181.5, 360 * (i % 4) + 180.0] for i in range(8)])
    viewer = napari.Viewer(show=True, title="cellsdk in napari")
    viewer.window.resize(1700, 900)
    viewer.add_image(field, name="field", rgb=True)
    viewer.add_points(centres, name="cells", size=30, face_color="yellow")
    widget = CellClassifierWidget(viewer)
    viewer.window.add_dock_widget(widget, name="cellsdk", area="right")
    widget.cell_size.setValue(360)
    widget.classify()  # the first call loads the model (and runs its self-check once per machine)
    walls, per_cell = [], []
    for _ in range(5):
        started = time.perf_counter()
        results = widget.classify()
        walls.append((time.perf_counter() - started) / len(results))
        per_cell += [r.seconds for r in results]
    viewer.layers.selection.active = viewer.layers["cellsdk cells"]
    from qtpy.QtWidgets import QApplication

    for step in range(6):
        QApplication.processEvents()
        if step == 2:
            viewer.reset_view()  # fit the field to the canvas the dock left
        time.sleep(0.1)
    out.parent.mkdir(parents=True, exist_ok=True)
    window = viewer.window._qt_window  # the main window with its docks (napari's screenshot leaves docks out)
    window.grab().save(str(out), "PNG")
    picture = Image.open(out).convert("RGB")  # 256 colours: a third of the bytes, the same to the eye
    picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    cpu = host_cpu()
    print(f"wrote {out}; {len(results)} cells: {[r.prediction.label for r in results]}")
    print(f"per cell (classify + explain, shipped int8 ONNX): median {statistics.median(per_cell) * 1000:.1f} ms; "
          f"through the widget incl. layers and table: median {statistics.median(walls) * 1000:.1f} ms "
          f"({cpu.model}, {cpu.cpu_class})")
    viewer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "guide" / "napari.png")
