"""Whether a MAP image can be built here: a Docker daemon that answers and holoscan-cli <= 4.2
(:func:`packager_status`)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from typing import Any, Dict, Optional, Tuple


def _version_tuple(text: str) -> Tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _docker_server(docker: str) -> Optional[str]:
    """None when the Docker daemon answers, else why not (the client alone cannot build an image)."""
    try:
        done = subprocess.run([docker, "version", "--format", "{{.Server.Version}}"], capture_output=True,
                              text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if done.returncode == 0 and done.stdout.strip():
        return None
    return (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]


def packager_status() -> Dict[str, Any]:
    """Whether a MAP can be built here: a Docker client whose daemon answers, and holoscan-cli <= 4.2 (the last
    with MAP packaging). ``message`` says what is missing."""
    docker = shutil.which("docker")
    try:
        cli_version: Optional[str] = importlib.metadata.version("holoscan-cli")
    except importlib.metadata.PackageNotFoundError:
        cli_version = None
    bin_dir = os.path.dirname(sys.executable)
    command = None
    for exe in ("monai-deploy", "holoscan"):  # holoscan-cli <= 4.2 installs both; monai-deploy picks the SDK
        path = shutil.which(exe) or shutil.which(exe, path=bin_dir)
        if path:
            command = [path, "package"] + ([] if exe == "monai-deploy" else ["--sdk", "monai-deploy"])
            break
    missing = []
    if docker is None:
        missing.append("Docker (no `docker` command on PATH)")
    else:
        server = _docker_server(docker)
        if server is not None:
            missing.append(f"a running Docker daemon (`docker version` failed: {server})")
    if cli_version is None:
        missing.append("holoscan-cli<=4.2 (not installed)")
    elif _version_tuple(cli_version) >= (4, 3):
        missing.append(f"holoscan-cli<=4.2 (holoscan-cli {cli_version} is installed: 4.3 removed MAP packaging, its "
                       "`package` command builds DEB/wheel packages of Holoscan Modules only)")
    elif command is None:
        missing.append(f"the `monai-deploy`/`holoscan` command of holoscan-cli {cli_version} (not on PATH)")
    if missing:
        message = ("MAP image not built; missing: " + "; ".join(missing) + ". The folder is complete: run the "
                   "packaging command in its README.md where Docker and holoscan-cli<=4.2 are installed "
                   "(pip install 'holoscan-cli<=4.2').")
    else:
        message = f"MAP packaging available: {' '.join(command)} (holoscan-cli {cli_version}, Docker {docker})"
    return {"docker": docker, "holoscan_cli": cli_version, "command": command if not missing else None,
            "ready": not missing, "missing": missing, "message": message}
