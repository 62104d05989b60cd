"""Ship a compressed model: a folder ready for MONAI Application Packaging (MAP).

**MAP-ready folder** (:func:`package_app`, :func:`check_package`): the app folder, the ``monai_prune`` source
vendored beside it (monai-prune is not on PyPI), the model under ``models/<name>/`` with verified sha256, an
``app.yaml`` in the Holoscan application-configuration format (``application``: title, version, inputFormats,
outputFormats; ``resources``: cpu, gpu, memory, gpuMemory; Holoscan SDK ``docs/cli/run_config.md``), a
``requirements.txt`` pinned to the versions installed here, a ``__main__.py`` (the packager runs a Python app
folder through it) and a README with the commands. Building the MAP image needs Docker and holoscan-cli <= 4.2
(``monai-deploy package`` / ``holoscan package``): holoscan-cli 4.3 removed MAP packaging, and its ``package``
command now builds DEB/wheel packages of Holoscan Modules only. Without them the folder is still written and the
result says what is missing.

Everything is written under a temporary name beside the target and renamed at the end; an existing target is
refused, never overwritten.

The folder's files are written by :mod:`.package_layout`, its pins by :mod:`.package_requirements`, the packager
is found by :mod:`.packager` and the folder validated by :mod:`.package_check`; every public name of those is
importable from here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from .._io import sha256  # noqa: F401
from ..errors import ConfigError, InputError
from ..runtime.registry import model_files  # noqa: F401
from ..utils import give_umask_mode
from .models import verify_config_files, verify_model_files  # noqa: F401
from .package_check import check_package
from .package_layout import MAIN, MANIFEST, MEMORY, SKIP, app_yaml, copy_model, readme
from .package_requirements import BASE_REQUIREMENTS, TORCH_CPU_INDEX, pinned_requirements  # noqa: F401
from .packager import packager_status
from .triton import NAME_PATTERN as _NAME  # one naming rule for models and packages

logger = logging.getLogger(__name__)


def package_app(
    app_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    model: Optional[str | os.PathLike] = None,
    name: Optional[str] = None,
    cpu: float = 2,
    memory: str = "4Gi",
    gpu: int = 0,
    version: Optional[str] = None,
    requirements_extra: Sequence[str] = (),
    gpu_memory: str = "8Gi",
    build: bool = False,
    tag: Optional[str] = None,
    platform: str = "x86_64",
) -> Dict[str, Any]:
    """Write a folder that ``monai-deploy package`` / ``holoscan package`` (holoscan-cli <= 4.2) turns into a MAP.

    Args:
        app_dir: the application folder; must hold ``app.py`` (``__pycache__``/``output(s)`` are skipped). Its
            own ``requirements.txt`` lines are kept; a ``__main__.py`` is written when it has none.
        out_dir: the folder to write; must not exist (written under a temporary name, renamed at the end).
        model: a compressed bundle folder (``configs/``, ``models/``, ``docs/``, ``LICENSE`` are copied and every
            ``model_files`` sha256 is verified) or one model file; copied to ``models/<name>/``.
        name: the model's folder name (default: the bundle folder's or file's name).
        cpu, memory, gpu, gpu_memory: ``app.yaml`` ``resources`` (``gpuMemory`` only when ``gpu > 0``).
        version: ``application.version`` (default: the bundle's metadata version, else 1.0.0).
        requirements_extra: more ``requirements.txt`` lines, as given.
        build, tag, platform: also build the MAP image ``tag`` when Docker and holoscan-cli <= 4.2 are present;
            otherwise the result's ``packager["message"]`` says what is missing (the folder is written either way).

    Returns:
        ``folder``, ``files`` (relative paths; the vendored package as ``vendored``), ``requirements`` (lines),
        ``pinned`` ({distribution: version}), ``model``, ``packager`` (status) and ``build``.
    """
    app_dir, out_dir = Path(app_dir).absolute(), Path(out_dir).absolute()
    model = os.path.abspath(model) if model is not None else None
    if model is not None:
        name = name or os.path.splitext(os.path.basename(model.rstrip(os.sep)))[0]
    _check_arguments(app_dir, out_dir, model, name, cpu, memory, gpu, gpu_memory, build, tag)
    import monai_prune

    package_root = Path(monai_prune.__file__).parent
    status = packager_status()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model_info, requirements = _write_folder(work, app_dir, out_dir, package_root, model, name, cpu, memory, gpu,
                                                 version, requirements_extra, gpu_memory, status)
        check_package(work)
        give_umask_mode(work)
        os.rename(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*")
                   if p.is_file() and p.relative_to(out_dir).parts[0] != package_root.name)
    result: Dict[str, Any] = {
        "folder": str(out_dir), "files": files,
        "vendored": {"path": package_root.name,
                     "files": sum(1 for p in (out_dir / package_root.name).rglob("*") if p.is_file())},
        "requirements": requirements["lines"], "pinned": requirements["pinned"], "model": model_info,
        "packager": status, "build": {"ran": False},
    }
    logger.info("wrote MAP-ready folder %s; %s", out_dir, status["message"])
    if build:
        result["build"] = _build(out_dir, status, tag, platform, bool(model_info))
    return result


def _check_arguments(app_dir: Path, out_dir: Path, model: Optional[str], name: Optional[str], cpu: float,
                     memory: str, gpu: int, gpu_memory: str, build: bool, tag: Optional[str]) -> None:
    if not (app_dir / "app.py").is_file():
        raise InputError(f"{app_dir} has no app.py: give the MONAI Deploy application folder")
    if os.path.lexists(out_dir):
        raise InputError(f"{out_dir} already exists: choose a new output folder (nothing was written)")
    if out_dir == app_dir or app_dir in out_dir.parents:
        raise InputError(f"the output folder {out_dir} must not be inside the app folder {app_dir}")
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu <= 0:
        raise ConfigError(f"cpu must be a positive number, got {cpu!r}")
    if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
        raise ConfigError(f"gpu must be an integer >= 0, got {gpu!r}")
    for label, value in (("memory", memory), ("gpu_memory", gpu_memory)):
        if not isinstance(value, str) or not MEMORY.match(value):
            raise ConfigError(f"{label} must look like 4Gi or 512Mi (units Mi, MiB, Gi, GiB, MB, GB), got {value!r}")
    if build and not tag:
        raise ConfigError("build=True needs tag, the image name, e.g. tag='spleen-seg:1.0'")
    if model is not None and not os.path.exists(model):
        raise InputError(f"model {model} does not exist")
    if model is not None and not _NAME.match(name):
        raise ConfigError(f"model name {name!r} must be letters, digits, '_', '.', '-' (it becomes a folder name)")


def _write_folder(work: Path, app_dir: Path, out_dir: Path, package_root: Path, model: Optional[str],
                  name: Optional[str], cpu: float, memory: str, gpu: int, version: Optional[str],
                  requirements_extra: Sequence[str], gpu_memory: str, status: Dict[str, Any]) -> tuple:
    """The folder's content written under ``work``: ``(model_info, requirements)``."""
    import monai_prune

    shutil.copytree(app_dir, work, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*SKIP, package_root.name))
    shutil.copytree(package_root, work / package_root.name, ignore=shutil.ignore_patterns(*SKIP))
    model_info: Dict[str, Any] = {}
    if model is not None:
        if (work / "models" / name).exists():
            raise InputError(f"the app folder already has models/{name}: choose another model name")
        model_info = {"name": name, "source": model, **copy_model(model, work / "models" / name)}
    if version is None:
        meta = Path(model, "configs", "metadata.json") if model else None
        version = (json.loads(meta.read_text(encoding="utf-8")).get("version")
                   if meta is not None and meta.is_file() else None) or "1.0.0"
    title = f"{out_dir.name} ({name})" if name else out_dir.name
    app_files = sorted(p for p in work.rglob("*.py") if p.relative_to(work).parts[0] not in (
        package_root.name, "models"))
    extra = list(requirements_extra)
    if (app_dir / "requirements.txt").is_file():
        extra += [ln.strip() for ln in (app_dir / "requirements.txt").read_text(encoding="utf-8").splitlines()
                  if ln.strip() and not ln.strip().startswith("#")]
    requirements = pinned_requirements(app_files, work / package_root.name, gpu=gpu, extra=extra)
    if gpu > 0 and "+cpu" in requirements["pinned"].get("torch", ""):
        logger.warning("gpu=%d but the installed torch is the CPU build (%s): the MAP will run torch on CPU; "
                       "package from an environment with a CUDA torch to use the GPU", gpu,
                       requirements["pinned"]["torch"])
    if (app_dir / "app.yaml").is_file():
        logger.warning("%s/app.yaml is replaced by one written from cpu/memory/gpu arguments", app_dir)
    if (app_dir / "README.md").is_file():
        os.replace(work / "README.md", work / "README_app.md")
    (work / "app.yaml").write_text(app_yaml(title, str(version), cpu, memory, gpu, gpu_memory), encoding="utf-8")
    (work / "requirements.txt").write_text("\n".join(requirements["lines"]) + "\n", encoding="utf-8")
    (work / "README.md").write_text(readme(out_dir.name, title, name, requirements["lines"], status),
                                    encoding="utf-8")
    if not (work / "__main__.py").exists():
        (work / "__main__.py").write_text(MAIN, encoding="utf-8")
    manifest = {"written_by": f"monai-prune {getattr(monai_prune, '__version__', '?')}",
                "python": sys.version.split()[0], "model": model_info, "requirements": requirements["lines"],
                "not_installed_imports": requirements["not_installed"]}
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return model_info, requirements


def _build(out_dir: Path, status: Dict[str, Any], tag: str, platform: str, with_model: bool) -> Dict[str, Any]:
    """Build the MAP image from the written folder when the packager is ready; the ``build`` record."""
    if not status["ready"]:
        logger.warning("%s", status["message"])
        return {"ran": False, "reason": status["message"]}
    command = status["command"][:2] + [str(out_dir), "-c", str(out_dir / "app.yaml"), "-t", tag,
                                       "--platform", platform] + status["command"][2:]
    if with_model:
        command += ["-m", str(out_dir / "models")]
    logger.info("building the MAP: %s", " ".join(command))
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        logger.error("MAP build failed (exit %d); the folder %s is intact", done.returncode, out_dir)
    return {"ran": True, "command": command, "returncode": done.returncode, "tag": tag}
