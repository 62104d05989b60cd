"""The ``requirements.txt`` of a MAP-ready folder: every distribution the app imports at run time (followed through
the vendored ``monai_prune``), pinned to the versions installed here, and the check of those pins."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ..errors import ConfigError

BASE_REQUIREMENTS = ("torch", "monai", "numpy", "pydicom", "highdicom", "onnxruntime", "openvino",
                     "monai-deploy-app-sdk", "nibabel")
TORCH_CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"


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


def distribution(name: str) -> Optional[Tuple[str, str]]:
    """``(name, version)`` of an installed distribution, None when it is not installed."""
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
        found = distribution(dist)
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


def check_requirements(path: Path) -> Dict[str, Any]:
    """Each ``dist==version`` line of a ``requirements.txt`` against the version installed here."""
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
        found = distribution(dist.split("[")[0])
        if found is None or found[1] != wanted:
            mismatches.append({"name": dist, "pinned": wanted, "installed": found[1] if found else None})
    return {"pinned": pinned, "mismatches": mismatches, "unpinned": unpinned}
