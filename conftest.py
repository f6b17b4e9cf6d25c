"""Repository-level pytest settings for the tests and the doctests: modules whose optional packages are missing are not
collected for doctests, self-check verdicts go to a cache of the session's own, and fp32 ONNX exports to one the run's
workers share."""

import importlib.util
import sys

import pytest

collect_ignore_glob = []
if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
    collect_ignore_glob += ["cellsdk/serve/app.py", "cellsdk/serve/server.py"]
if importlib.util.find_spec("napari") is None or importlib.util.find_spec("qtpy") is None:
    collect_ignore_glob += ["cellsdk/napari/widget.py"]


@pytest.fixture(scope="session", autouse=True)
def _private_selfcheck_cache(tmp_path_factory: pytest.TempPathFactory):
    """The suite's self-check verdicts go to a folder of its own, never the user's ~/.cache/cellsdk."""
    import os

    saved = {name: os.environ.get(name) for name in ("CELLSDK_CACHE", "CELLSDK_EXPORT_CACHE")}
    os.environ["CELLSDK_CACHE"] = str(tmp_path_factory.mktemp("cellsdk-cache"))
    # fp32 ONNX exports are shared by every xdist worker of the run (the same checkpoint is converted by many tests)
    base = tmp_path_factory.getbasetemp()
    os.environ["CELLSDK_EXPORT_CACHE"] = str((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)
                                             / "onnx-export")
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# napari's pytest plugin (loaded wherever napari is installed) brings autouse fixtures for the whole session; two
# reach beyond the napari tests and are replaced here by fixtures of the same name:
@pytest.fixture(autouse=True, scope="session")
def use_leak_safe_log_records():
    """napari's swaps the logging record factory for one that turns every log argument into a string, which breaks
    %-formatting in other libraries' log calls (Ray Data's); the suite keeps the standard records."""
    yield


@pytest.fixture(autouse=True)
def _disable_qt_warnings(monkeypatch):
    """napari's imports its Qt main window (and Qt) in every test; here only where a test has already imported it."""
    window = sys.modules.get("napari._qt.qt_main_window")
    if window is not None:
        monkeypatch.setattr(window, "SHOW_QT_WARNING", False)
