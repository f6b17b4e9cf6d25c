"""The runtime without torch: ONNX models load and predict with torch unimportable."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, SAMPLES


def test_onnx_runs_with_torch_blocked(artefacts):
    image = sorted(SAMPLES.glob("test/platelet/*.jpg"))[0]
    code = (
        "import sys\n"
        "for name in ('torch', 'timm', 'torchvision'):\n"
        "    sys.modules[name] = None  # any import of them now raises ImportError\n"
        "import cellsdk\n"
        f"clf = cellsdk.Classifier.load({str(artefacts['onnxruntime'])!r})\n"
        f"print(clf.predict({str(image)!r}).label)\n"
        "print(clf.backend_name)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    label, backend = result.stdout.split()
    assert backend == "onnxruntime" and label in (
        "basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")


def test_explanations_run_with_torch_blocked(tmp_path):
    """The shipped model explains (overlay PNG included) without torch, timm or the grad-cam package."""
    image = sorted((REPO / "samples" / "pbc_raw").glob("*/*.jpg"))[0]
    code = (
        "import sys\n"
        "for name in ('torch', 'timm', 'torchvision', 'pytorch_grad_cam', 'cv2'):\n"
        "    sys.modules[name] = None\n"
        "import cellsdk\n"
        "clf = cellsdk.Classifier.load()\n"
        f"e = clf.explain({str(image)!r})\n"
        f"e.save({str(tmp_path / 'o.png')!r})\n"
        "print(e.target, e.prediction.label, e.heatmap.shape[0], e.heatmap.shape[1], e.cam.shape[0], e.box)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    target, label, height, width, grid, *_box = result.stdout.split()
    from PIL import Image

    raw = Image.open(image)
    assert target == label and (int(width), int(height)) == raw.size and grid == "4"
    assert Image.open(tmp_path / "o.png").size == raw.size
