"""The repository's bundles (``bundles/``) for tests: copy one without its data/models, write its synthetic data with
its own script, run the stock ``python -m monai.bundle`` CLI offline."""

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/helpers/ -> the repository
BUNDLES_DIR = os.path.join(REPO, "bundles")
SEG, CXR = "spleen_ct_segmentation_compressed", "chest_xray_classification_compressed"


def load_config(name, *parts):
    with open(os.path.join(BUNDLES_DIR, name, *parts)) as f:
        return json.load(f)


def copy_bundle(name, tmp_path) -> str:
    root = str(tmp_path / name)
    shutil.copytree(os.path.join(BUNDLES_DIR, name), root,
                    ignore=shutil.ignore_patterns("data", "models", "eval", "__pycache__"))
    return root


def make_data(root, *args):
    """The bundle's own data script, in this process (its ``main`` with command-line arguments)."""
    spec = importlib.util.spec_from_file_location("make_synthetic_data", os.path.join(root, "scripts",
                                                                                      "make_synthetic_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--output", os.path.join(root, "data"), *args]) == 0
    with open(os.path.join(root, "data", "dataset.json")) as f:
        return json.load(f)


def offline_env():
    env = dict(os.environ)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[var] = "http://127.0.0.1:9"  # nothing listens there: any download attempt fails
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    return env


@contextlib.contextmanager
def offline():
    """This process's environment as ``offline_env`` sets a subprocess's, for an in-process command, then restored."""
    env = offline_env()
    with pytest.MonkeyPatch.context() as patch:
        for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            patch.setenv(var, env[var])
        for var in ("no_proxy", "NO_PROXY"):
            patch.delenv(var, raising=False)
        yield


def bundle_cli(root, *args) -> str:
    """``python -m monai.bundle <args>`` from the bundle root, offline; returns the log."""
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900, env=offline_env())
    log = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)}\n{log[-5000:]}"
    return log
