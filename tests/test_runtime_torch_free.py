"""The runtime without torch: ONNX models load and predict with torch unimportable."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO, SAMPLES


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
