"""What a MAP-ready folder holds besides the app: ``app.yaml``, the README, ``__main__.py``, the manifest, and the
model copied under ``models/<name>/`` with its sha256 (used by :func:`monai_prune.deploy.package.package_app`)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from .._io import sha256
from ..errors import InputError
from ..runtime.registry import model_files
from .models import verify_config_files, verify_model_files

MANIFEST = "monai_prune_package.json"
SKIP = ("__pycache__", "*.pyc", "output", "outputs", ".git", ".pytest_cache", ".ipynb_checkpoints")
MEMORY = re.compile(r"^\d+(\.\d+)?\s*(Mi|MiB|Gi|GiB|MB|GB|m|g)$")  # the units holoscan-cli converts


def _yaml_string(text: str) -> str:
    return json.dumps(str(text))  # a JSON string is a valid YAML double-quoted scalar


def app_yaml(title: str, version: str, cpu: float, memory: str, gpu: int, gpu_memory: str) -> str:
    """``app.yaml`` in the Holoscan application-configuration format."""
    lines = [
        "# MONAI Deploy / Holoscan application configuration (holoscan-cli <= 4.2 `package -c app.yaml`), written by",
        "# monai-prune. inputFormats/outputFormats are the documented keys; holoscan-cli's packager copies",
        "# input-formats/output-formats into the MAP's app.json, so both spellings are given.",
        "application:",
        f"  title: {_yaml_string(title)}",
        f"  version: {_yaml_string(version)}",
        '  inputFormats: ["file"]',
        '  outputFormats: ["file"]',
        '  input-formats: ["file"]',
        '  output-formats: ["file"]',
        "resources:",
        f"  cpu: {cpu:g}",
        f"  gpu: {gpu}",
        f"  memory: {memory}",
    ]
    if gpu > 0:
        lines.append(f"  gpuMemory: {gpu_memory}")
    return "\n".join(lines) + "\n"


def readme(name: str, title: str, model_name: Optional[str], requirements: List[str], status: Dict[str, Any]) -> str:
    """The folder's README.md: how to run the app and build the MAP, and the pinned requirements."""
    model_arg = f"models/{model_name}" if model_name else "<model folder>"
    tag = f"{re.sub(r'[^a-z0-9_.-]', '-', name.lower())}:latest"
    return "\n".join([
        f"# {title}", "",
        "A MONAI Deploy application folder written by `monai_prune.deploy.package.package_app`: the app, the "
        "`monai_prune` source it imports (vendored: monai-prune is not on PyPI), "
        + (f"the model under `{model_arg}/` (sha256 checked), " if model_name else "")
        + "`app.yaml`, and `requirements.txt` pinned to the versions it was tested with.", "",
        "## Run locally", "", "```bash", "pip install -r requirements.txt",
        f"python app.py -i <dicom dir> -o <out dir> -m {model_arg}", "```", "",
        "Run it from this folder (or `python <this folder>`): Python then imports the vendored `monai_prune`.", "",
        "## Build the MONAI Application Package (MAP)", "",
        "Needs Docker and holoscan-cli <= 4.2 (`pip install 'holoscan-cli<=4.2'`); holoscan-cli 4.3 removed MAP "
        "packaging.", "", "```bash",
        f"monai-deploy package {name} -c {name}/app.yaml -t {tag} --platform x86_64"
        + (f" -m {name}/models" if model_name else ""),
        "# the same with the holoscan command of holoscan-cli <= 4.2:",
        f"holoscan package {name} -c {name}/app.yaml -t {tag} --platform x86_64 --sdk monai-deploy"
        + (f" -m {name}/models" if model_name else ""),
        "```", "",
        f"When this folder was written: {status['message']}", "",
        "## Pinned requirements", "", "```", *requirements, "```", "",
        "`monai_prune.deploy.package.check_package(<this folder>)` checks app.yaml, the pins against the installed "
        "versions and the model checksums.", ""])


MAIN = '''"""Entry point for `python <this folder>` (how the MAP packager runs a Python application folder)."""

import os
import runpy
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)  # the vendored monai_prune
runpy.run_path(os.path.join(here, "app.py"), run_name="__main__")
'''


def copy_model(model: str, target: Path) -> Dict[str, Any]:
    """Copy a compressed bundle (its sha256s verified before and after) or one model file to ``target``;
    ``{"kind", "files": {relative path: sha256}}``."""
    target.mkdir(parents=True)
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "configs", "metadata.json")):
            raise InputError(f"model folder {model} has no configs/metadata.json: give a compressed bundle folder "
                             "or a single model file")
        verify_model_files(model)  # refuse a tampered source before copying anything
        verify_config_files(model)
        for entry in ("configs", "models", "docs", "LICENSE"):
            source = os.path.join(model, entry)
            if os.path.isdir(source):
                shutil.copytree(source, target / entry, ignore=shutil.ignore_patterns(*SKIP))
            elif os.path.isfile(source):
                shutil.copy2(source, target / entry)
        return {"kind": "bundle", "files": {f"models/{k}": v for k, v in verify_model_files(str(target)).items()}}
    if not os.path.isfile(model):
        raise InputError(f"model {model} does not exist")
    for path in model_files(model):  # an OpenVINO .xml travels with its .bin
        if os.path.isfile(path):
            shutil.copy2(path, target / os.path.basename(path))
    return {"kind": "file", "files": {p.name: sha256(str(p)) for p in sorted(target.iterdir())}}

