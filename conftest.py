"""Repository-level pytest settings: modules whose optional packages are missing are not collected for doctests."""

import importlib.util

collect_ignore_glob = []
if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
    collect_ignore_glob += ["cellsdk/serve/app.py", "cellsdk/serve/server.py"]
