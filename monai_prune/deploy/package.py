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
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from .._io import sha256
from ..runtime.registry import model_files
from .models import verify_model_files
from ..errors import BackendUnavailableError, ConfigError, InputError
from ..utils import give_umask_mode
from .models import verify_config_files
from .triton import NAME_PATTERN as _NAME  # one naming rule for models and packages

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- MAP folder
BASE_REQUIREMENTS = ("torch", "monai", "numpy", "pydicom", "highdicom", "onnxruntime", "openvino",
                     "monai-deploy-app-sdk", "nibabel")
TORCH_CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
MANIFEST = "monai_prune_package.json"
_SKIP = ("__pycache__", "*.pyc", "output", "outputs", ".git", ".pytest_cache", ".ipynb_checkpoints")
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(Mi|MiB|Gi|GiB|MB|GB|m|g)$")  # the units holoscan-cli converts


def _imports(path: Path, deep: bool) -> Set[Tuple[int, str, Optional[str]]]:
    """(level, module, imported name) of every import in a file; ``deep=False``: only those that run on import
    (not inside functions)."""
    found: Set[Tuple[int, str, Optional[str]]] = set()

    def visit(node) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.update((0, a.name, None) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.update((child.level, child.module or "", a.name) for a in child.names)
            elif deep or not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def _runtime_imports(app_files: Iterable[Path], package_root: Path) -> Set[str]:
    """Top-level third-party modules the app imports at run time: every import of the app's own files, followed
    through the vendored ``monai_prune`` (imports that run when a module loads; all imports of ``deploy/``)."""
    package = package_root.name
    third_party: Set[str] = set()
    todo = [(f, None) for f in app_files]
    seen: Set[Path] = set()

    def module_file(dotted: str) -> Optional[Path]:
        parts = dotted.split(".")[1:]
        base = package_root.joinpath(*parts)
        for candidate in (base / "__init__.py", base.with_suffix(".py")):
            if candidate.is_file():
                return candidate
        return None

    def enqueue(dotted: str) -> None:
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
            path = module_file(".".join(parts[:i]))
            if path is not None:
                todo.append((path, ".".join(parts[:i])))

    while todo:
        path, dotted = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        deep = dotted is None or dotted.startswith(f"{package}.deploy")
        current = (dotted or "").split(".") if dotted else []
        is_package = path.name == "__init__.py"
        for level, module, name in _imports(path, deep):
            if level:  # relative: resolved inside the vendored package
                base = current if is_package else current[:-1]
                base = base[: len(base) - (level - 1)] if level > 1 else base
                target = ".".join(base + ([module] if module else []))
            else:
                target = module
            if target.split(".")[0] == package:
                enqueue(target)
                if name and module_file(f"{target}.{name}") is not None:
                    enqueue(f"{target}.{name}")
            elif target and not level:
                third_party.add(target.split(".")[0])
    stdlib = set(getattr(sys, "stdlib_module_names", ())) | {"__future__"}
    return third_party - stdlib


def _distribution(name: str) -> Optional[Tuple[str, str]]:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return dist.metadata["Name"], dist.version


def pinned_requirements(app_files: Iterable[Path], package_root: Path, gpu: int = 0,
                        extra: Sequence[str] = ()) -> Dict[str, Any]:
    """``requirements.txt`` lines pinned to the versions installed here: the Deploy stack, and every distribution
    the app's imports (followed through the vendored package) come from; ``extra`` lines appended as given."""
    root = package_root.parent  # the app's own modules are not distributions
    modules = {m for m in _runtime_imports(app_files, package_root)
               if not ((root / f"{m}.py").is_file() or (root / m).is_dir())}
    by_module = importlib.metadata.packages_distributions()
    wanted: List[str] = list(BASE_REQUIREMENTS)
    not_found = []
    for module in sorted(modules):
        dists = by_module.get(module)
        if not dists:
            not_found.append(module)
        wanted += [d for d in dists or () if d not in wanted]
    pins: Dict[str, str] = {}
    for dist in wanted:
        found = _distribution(dist)
        if found is None:
            not_found.append(dist)
            continue
        dist_name, version = found
        if dist_name.lower() == "monai-prune":
            continue  # vendored, not installed
        if gpu == 0 and dist_name.lower() == "onnxruntime-gpu":
            dist_name = "onnxruntime"  # a CPU MAP runs the CPU package
        pins.setdefault(dist_name, version)
    lines = [TORCH_CPU_INDEX] if "+cpu" in pins.get("torch", "") else []
    lines += [f"{d}=={v}" for d, v in sorted(pins.items(), key=lambda kv: kv[0].lower())]
    for line in extra:
        line = str(line).strip()
        if not line or "\n" in line:
            raise ConfigError(f"each extra requirement must be one non-empty line, got {line!r}")
        if line not in lines:
            lines.append(line)
    return {"lines": lines, "pinned": pins, "not_installed": sorted(set(not_found))}


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


def _yaml_string(text: str) -> str:
    return json.dumps(str(text))  # a JSON string is a valid YAML double-quoted scalar


def _app_yaml(title: str, version: str, cpu: float, memory: str, gpu: int, gpu_memory: str) -> str:
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


def _readme(name: str, title: str, model_name: Optional[str], requirements: List[str], status: Dict[str, Any]) -> str:
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


_MAIN = '''"""Entry point for `python <this folder>` (how the MAP packager runs a Python application folder)."""

import os
import runpy
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)  # the vendored monai_prune
runpy.run_path(os.path.join(here, "app.py"), run_name="__main__")
'''


def _copy_model(model: str, target: Path) -> Dict[str, Any]:
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
                shutil.copytree(source, target / entry, ignore=shutil.ignore_patterns(*_SKIP))
            elif os.path.isfile(source):
                shutil.copy2(source, target / entry)
        return {"kind": "bundle", "files": {f"models/{k}": v for k, v in verify_model_files(str(target)).items()}}
    if not os.path.isfile(model):
        raise InputError(f"model {model} does not exist")
    for path in model_files(model):  # an OpenVINO .xml travels with its .bin
        if os.path.isfile(path):
            shutil.copy2(path, target / os.path.basename(path))
    return {"kind": "file", "files": {p.name: sha256(str(p)) for p in sorted(target.iterdir())}}


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
        if not isinstance(value, str) or not _MEMORY.match(value):
            raise ConfigError(f"{label} must look like 4Gi or 512Mi (units Mi, MiB, Gi, GiB, MB, GB), got {value!r}")
    if build and not tag:
        raise ConfigError("build=True needs tag, the image name, e.g. tag='spleen-seg:1.0'")
    model = os.path.abspath(model) if model is not None else None
    if model is not None and not os.path.exists(model):
        raise InputError(f"model {model} does not exist")
    if model is not None:
        name = name or os.path.splitext(os.path.basename(model.rstrip(os.sep)))[0]
        if not _NAME.match(name):
            raise ConfigError(f"model name {name!r} must be letters, digits, '_', '.', '-' (it becomes a folder name)")
    import monai_prune

    package_root = Path(monai_prune.__file__).parent
    status = packager_status()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        shutil.copytree(app_dir, work, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*_SKIP, package_root.name))
        shutil.copytree(package_root, work / package_root.name, ignore=shutil.ignore_patterns(*_SKIP))
        model_info: Dict[str, Any] = {}
        if model is not None:
            if (work / "models" / name).exists():
                raise InputError(f"the app folder already has models/{name}: choose another model name")
            model_info = {"name": name, "source": model, **_copy_model(model, work / "models" / name)}
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
        (work / "app.yaml").write_text(_app_yaml(title, str(version), cpu, memory, gpu, gpu_memory), encoding="utf-8")
        (work / "requirements.txt").write_text("\n".join(requirements["lines"]) + "\n", encoding="utf-8")
        (work / "README.md").write_text(_readme(out_dir.name, title, name, requirements["lines"], status),
                                        encoding="utf-8")
        if not (work / "__main__.py").exists():
            (work / "__main__.py").write_text(_MAIN, encoding="utf-8")
        manifest = {"written_by": f"monai-prune {getattr(monai_prune, '__version__', '?')}",
                    "python": sys.version.split()[0], "model": model_info, "requirements": requirements["lines"],
                    "not_installed_imports": requirements["not_installed"]}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
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
        if not status["ready"]:
            logger.warning("%s", status["message"])
            result["build"] = {"ran": False, "reason": status["message"]}
        else:
            command = status["command"][:2] + [str(out_dir), "-c", str(out_dir / "app.yaml"), "-t", tag,
                                               "--platform", platform] + status["command"][2:]
            if model_info:
                command += ["-m", str(out_dir / "models")]
            logger.info("building the MAP: %s", " ".join(command))
            done = subprocess.run(command, check=False)
            result["build"] = {"ran": True, "command": command, "returncode": done.returncode, "tag": tag}
            if done.returncode != 0:
                logger.error("MAP build failed (exit %d); the folder %s is intact", done.returncode, out_dir)
    return result


# ---------------------------------------------------------------------------------------------------- checks
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


def _check_requirements(path: Path) -> Dict[str, Any]:
    mismatches, unpinned, pinned = [], [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        if "==" not in line:
            unpinned.append(line)
            continue
        dist, wanted = (s.strip() for s in line.split("==", 1))
        pinned += 1
        found = _distribution(dist.split("[")[0])
        if found is None or found[1] != wanted:
            mismatches.append({"name": dist, "pinned": wanted, "installed": found[1] if found else None})
    return {"pinned": pinned, "mismatches": mismatches, "unpinned": unpinned}


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
        if key in resources and not _MEMORY.match(str(resources[key])):
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
    requirements = _check_requirements(folder / "requirements.txt")
    if requirements["mismatches"]:
        logger.warning("%s: pinned versions differ from the installed ones: %s", folder, requirements["mismatches"])
    return {"folder": str(folder), "ok": not requirements["mismatches"], "yaml_parser": parser,
            "application": app, "resources": resources, "models": models, "requirements": requirements,
            "has_main": (folder / "__main__.py").is_file()}
