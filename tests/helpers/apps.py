"""Run one of the repository's MONAI Deploy apps (``apps/*/app.py``) in this process, as ``monai-prune serve`` runs
each study: the app module's ``main(argv)``, with what it prints and logs captured.

A subprocess per app run pays the interpreter, MONAI, Holoscan and the runtime start-up (6-10 s here) for every
study; the tests that check a result rather than the start-up run the app in-process this way, and each app keeps
tests that run it as a user does (``python app.py`` or ``monai-prune deploy run``) in a subprocess.
"""

import importlib.util
import io
import logging
import os
from contextlib import redirect_stderr, redirect_stdout
from typing import Tuple

from .repo_bundles import REPO

APPS = {name: os.path.join(REPO, "apps", name, "app.py") for name in ("ct_seg_compressed", "xray_cls_compressed")}
_loaded = {}


def app_module(path: str):
    """The app file as a module, loaded once per process (under a name of its own, as ``serve`` loads it)."""
    if path not in _loaded:
        name = "app_" + os.path.basename(os.path.dirname(path))
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[path] = module
    return _loaded[path]


def run_app_here(path: str, *args: str) -> Tuple[int, str]:
    """``python <path> <args>`` in this process: (exit code, stdout + stderr + the INFO log lines). The log format
    is the one the apps' ``__main__`` sets up, on a handler removed afterwards."""
    module = app_module(path)
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # the SDK's logging.json replaces the root's handlers
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with redirect_stdout(buffer), redirect_stderr(buffer):
            code = module.main([path, *map(str, args)])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return code, buffer.getvalue()


def ok_here(path: str, *args: str) -> str:
    code, log = run_app_here(path, *args)
    assert code == 0, f"{path} {' '.join(map(str, args))}\n{log[-5000:]}"
    return log
