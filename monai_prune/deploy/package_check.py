"""Validate a MAP-ready folder written by :func:`monai_prune.deploy.package.package_app` (:func:`check_package`)."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Tuple

from .._io import sha256
from ..errors import BackendUnavailableError, InputError
from .models import verify_config_files, verify_model_files
from .package_layout import MANIFEST, MEMORY
from .package_requirements import check_requirements

logger = logging.getLogger(__name__)


def _read_yaml(path: Path) -> Tuple[Dict[str, Any], str]:
    """The ``application`` and ``resources`` sections, with PyYAML when installed, else Holoscan's yaml-cpp."""
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise InputError(f"{path} is not valid YAML: {e}") from e
        return (data if isinstance(data, dict) else {}), "pyyaml"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the stack-size warning of importing holoscan
            from holoscan.core import Application
    except ImportError as e:
        raise BackendUnavailableError(f"reading {path} needs PyYAML (pip install pyyaml) or the Holoscan SDK "
                                      "(installed with monai-deploy-app-sdk); neither is installed") from e
    reader = Application([sys.executable])
    reader.config(str(path))  # yaml-cpp logs a syntax error and leaves the sections empty
    return {key: reader.kwargs(key) for key in ("application", "resources")}, "holoscan yaml-cpp (PyYAML not installed)"



def check_package(folder: str | os.PathLike) -> Dict[str, Any]:
    """Validate a folder written by :func:`package_app`: ``app.py``, the vendored ``monai_prune``, ``app.yaml``
    (``application.title``/``version``, ``resources.cpu``/``memory``, ``gpuMemory`` when ``gpu > 0``), every model
    file's sha256, and each ``requirements.txt`` pin against the version installed here.

    Raises :class:`~monai_prune.errors.InputError` for a broken folder; pins that differ from what is installed
    are listed under ``requirements["mismatches"]`` (``ok`` is then False): that is expected on another machine.
    """
    folder = Path(folder)
    for required in ("app.py", "app.yaml", "requirements.txt", "monai_prune/__init__.py"):
        if not (folder / required).is_file():
            raise InputError(f"{folder} has no {required}: not a package folder written by package_app")
    config, parser = _read_yaml(folder / "app.yaml")
    app, resources = config.get("application"), config.get("resources")
    if not isinstance(app, dict) or not str(app.get("title") or "").strip() or app.get("version") in (None, ""):
        raise InputError(f"{folder}/app.yaml needs application: title and version (non-empty); read: {app!r}")
    if not isinstance(resources, dict) or "cpu" not in resources or "memory" not in resources:
        raise InputError(f"{folder}/app.yaml needs resources: cpu and memory; read: {resources!r}")
    for key in ("memory", "gpuMemory"):
        if key in resources and not MEMORY.match(str(resources[key])):
            raise InputError(f"{folder}/app.yaml resources.{key} = {resources[key]!r} is not a size like 4Gi")
    if int(resources.get("gpu") or 0) > 0 and "gpuMemory" not in resources:
        raise InputError(f"{folder}/app.yaml asks for a GPU but gives no resources.gpuMemory")
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8")) if (folder / MANIFEST).is_file() else {}
    recorded = manifest.get("model", {})
    models: Dict[str, Dict[str, str]] = {}
    models_dir = folder / "models"
    for entry in sorted(models_dir.iterdir()) if models_dir.is_dir() else ():
        if (entry / "configs" / "metadata.json").is_file():
            models[entry.name] = verify_model_files(str(entry))
            verify_config_files(str(entry))
        elif entry.is_dir() and recorded.get("name") == entry.name:
            for file_name, digest in recorded["files"].items():
                if not (entry / file_name).is_file() or sha256(str(entry / file_name)) != digest:
                    raise InputError(f"model file models/{entry.name}/{file_name} is missing or does not match its "
                                     f"sha256 in {MANIFEST}: it was modified or corrupted")
            models[entry.name] = dict(recorded["files"])
        else:
            raise InputError(f"models/{entry.name} is neither a bundle with sha256s in configs/metadata.json nor the "
                             f"model recorded in {MANIFEST}: its integrity cannot be checked")
    requirements = check_requirements(folder / "requirements.txt")
    if requirements["mismatches"]:
        logger.warning("%s: pinned versions differ from the installed ones: %s", folder, requirements["mismatches"])
    return {"folder": str(folder), "ok": not requirements["mismatches"], "yaml_parser": parser,
            "application": app, "resources": resources, "models": models, "requirements": requirements,
            "has_main": (folder / "__main__.py").is_file()}
