"""Repository-level pytest settings for the tests and the doctests: modules whose optional packages are missing are not
collected for doctests, and self-check verdicts go to a cache of the session's own."""

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

    saved = os.environ.get("CELLSDK_CACHE")
    os.environ["CELLSDK_CACHE"] = str(tmp_path_factory.mktemp("cellsdk-cache"))
    yield
    if saved is None:
        os.environ.pop("CELLSDK_CACHE", None)
    else:
        os.environ["CELLSDK_CACHE"] = saved


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
