"""The package's layering, read from the source (every import, those inside functions too): no import cycle between
first-party modules, the leaves (``_io``, ``_markdown``, ``_plotting``, ``errors``) import nothing first-party, and
no module imports another module's private (``_``-prefixed) name, and none is over 400 lines."""

import ast
import os
from typing import Dict, List, Set, Tuple

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "monai_prune")
LEAVES = ("monai_prune._io", "monai_prune._markdown", "monai_prune._plotting", "monai_prune.errors")


def _modules() -> Dict[str, str]:
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path[:-3], os.path.dirname(PACKAGE)).replace(os.sep, ".")
                found[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
    return found


MODULES = _modules()


def _imports(module: str) -> List[Tuple[str, str, int]]:
    """(imported first-party module, imported name or "", line) for every import statement of ``module``."""
    path = MODULES[module]
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "monai_prune"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "monai_prune":
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule, "", node.lineno) if submodule in MODULES else (base, alias.name, node.lineno))
    return found


def _graph() -> Dict[str, Set[str]]:
    graph = {}
    for module in MODULES:
        targets = set()
        for target, _, _ in _imports(module):
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in MODULES and target != module and not module.startswith(target + "."):
                targets.add(target)  # a package's own __init__ runs first anyway: not an edge of the layering
        graph[module] = targets
    return graph


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_first_party_imports_never_form_a_cycle():
    assert len(MODULES) > 50 and "monai_prune.deploy.serve" in MODULES  # the walk found the package
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle_through_an_import_inside_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    imports = _imports("monai_prune.cli.deploy_commands")  # commands import inside functions (fast --help)
    assert any(target == "monai_prune.deploy.serve" for target, _, _ in imports)


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_nothing_first_party(leaf):
    assert _imports(leaf) == []


MAX_LINES = 400


def test_no_module_is_over_400_lines():
    """The redesign's size bound: a module holds one concern (split a module that grows past it)."""
    long = {}
    for module, path in MODULES.items():
        with open(path) as f:
            lines = sum(1 for _ in f)
        if lines > MAX_LINES:
            long[module] = lines
    assert long == {}


def test_no_private_name_crosses_modules():
    crossing = [f"{module}:{line} imports {name} from {target}" for module in MODULES
                for target, name, line in _imports(module) if name.startswith("_") and not name.startswith("__")]
    assert crossing == []


def test_moved_helpers_keep_their_public_homes():
    from monai_prune import _io, _markdown, bundle, fidelity, report, search, utils
    from monai_prune.deploy import models

    assert utils.atomic_write_text is _io.atomic_write_text and utils.atomic_path is _io.atomic_path
    assert utils.give_umask_mode is _io.give_umask_mode and fidelity.json_safe is _io.json_safe
    assert bundle.sha256 is _io.sha256 and bundle.config_digests is _io.config_digests
    assert bundle.verify_model_files is models.verify_model_files
    assert report.markdown_table is _markdown.markdown_table and search.candidates_table is report.candidates_table
    from monai_prune import fidelity_metrics
    from monai_prune.bundle import compress as bundle_compress
    from monai_prune.fidelity import card, metrics

    assert fidelity_metrics.PerClassMetrics is metrics.PerClassMetrics is fidelity.PerClassMetrics
    assert fidelity.FidelityCard is card.FidelityCard and bundle.compress_bundle is bundle_compress.compress_bundle


TESTS = os.path.dirname(os.path.abspath(__file__))


def test_tests_use_public_names_and_helpers_not_conftest_or_other_tests():
    """Tests import helpers from ``tests/helpers/`` by public names; never from ``conftest`` or another test module,
    and never a private name of monai_prune or of a helper."""
    bad = []
    for folder in (TESTS, os.path.join(TESTS, "helpers")):
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if not isinstance(node, ast.ImportFrom):
                    continue
                module = node.module or ""
                ours = node.level or module.split(".")[0] in ("monai_prune", "helpers")
                if module.split(".")[0] == "conftest" or module.split(".")[0].startswith("test_"):
                    bad.append(f"{name}:{node.lineno} imports from {module}")
                elif ours:
                    bad += [f"{name}:{node.lineno} imports {a.name} from {module}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")
                            and f"{module}.{a.name}" not in MODULES]  # a leaf module (_io) is not a private name
    assert bad == []
