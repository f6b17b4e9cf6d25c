"""OpenVINO's converter and NNCF send no telemetry from a cellsdk conversion (and fork no process to send it).

Run in fresh interpreters: NNCF turns its own telemetry off under pytest, which would hide what a user's
``cellsdk-convert`` does.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # runs OpenVINO conversions in fresh interpreters

pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'cellsdk[openvino]'")
pytest.importorskip("nncf", reason="NNCF is not installed: pip install 'cellsdk[openvino]'")
onnx = pytest.importorskip("onnx", reason="onnx is not installed: pip install 'cellsdk[convert]'")

PROGRAM = textwrap.dedent("""
    import os, sys, time
    forks = []
    real_fork = os.fork
    def fork():
        forks.append(1)
        return real_fork()
    os.fork = fork
    import numpy as np
    from onnx import TensorProto, helper, save
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    weights = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.random.rand(108).astype("float32"))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weights])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), sys.argv[1])
    if sys.argv[2] == "early":  # the tools were imported before cellsdk's converter ran (NNCF sends on import)
        import openvino.tools.ovc.convert_impl, nncf
        time.sleep(2.0)
    from cellsdk.converters.openvino import without_telemetry
    without_telemetry()
    forks.clear()  # from here on, cellsdk's conversion
    import nncf, openvino as ov
    from openvino.tools.ovc import convert_impl, telemetry_stub
    from nncf.telemetry import decorator
    from unittest.mock import MagicMock
    model = ov.convert_model(sys.argv[1])
    data = nncf.Dataset([np.random.rand(1, 3, 8, 8).astype("float32") for _ in range(4)])
    nncf.quantize(model, data, subset_size=4)
    time.sleep(1.0)  # telemetry sends from a thread pool
    print(convert_impl.tm is telemetry_stub, isinstance(decorator.telemetry, MagicMock), len(forks))
""")


@pytest.mark.parametrize("imported", ["late", "early"])
def test_conversion_sends_no_telemetry_and_forks_nothing(tmp_path, imported):
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}  # no consent file, not marked as CI
    result = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path / "conv.onnx"), imported], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-3:] == ["True", "True", "0"]
    if imported == "late":  # what cellsdk-convert does: nothing written to the user's home (client id, statistics)
        assert not (tmp_path / "intel").exists()
