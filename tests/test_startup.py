"""Start-up cost: ``import monai_prune`` and ``monai-prune --help`` must not import torch or MONAI (about a second).

Each test runs a fresh interpreter (this one has torch loaded already) and reads, at its exit, which heavy modules
it imported.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("torch", "monai", "numpy", "onnx", "onnxruntime", "openvino")
SUBCOMMANDS = ("demo", "prune", "measure", "recipes", "compress-bundle", "deploy", "package", "search", "report")

# printed by an atexit hook as the interpreter's last line on stderr, after argparse's SystemExit too
_REPORT = textwrap.dedent("""
    import atexit, json, sys
    atexit.register(lambda: print("LOADED " + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)),
                                  file=sys.stderr))
""")


def _run(code: str, timeout: float = 60):
    """Run ``code`` in a fresh interpreter in the repository root; return (returncode, stdout, stderr, heavy
    modules imported)."""
    script = _REPORT.format(heavy=HEAVY) + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    reports = [line for line in done.stderr.splitlines() if line.startswith("LOADED ")]
    assert reports, f"no module report; stderr:\n{done.stderr}"
    stderr = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("LOADED "))
    return done.returncode, done.stdout, stderr, json.loads(reports[-1][len("LOADED "):])


def _cli(*argv: str) -> str:
    return f"import sys\nsys.argv = ['monai-prune', *{list(argv)!r}]\nfrom monai_prune.cli import main\nsys.exit(main())\n"


def test_import_does_not_load_torch():
    rc, _, err, loaded = _run("""
        import monai_prune
        import monai_prune.cli
        import monai_prune.errors
        from monai_prune import MonaiPruneError, __version__
        from monai_prune.errors import ConfigError, InputError
        assert issubclass(ConfigError, MonaiPruneError) and __version__
    """)
    assert rc == 0, err
    assert "torch" not in loaded and "monai" not in loaded, loaded
    assert loaded == [], f"import monai_prune pulled in {loaded}"


def test_help_lists_subcommands_without_torch():
    rc, out, err, loaded = _run(_cli("--help"))
    assert rc == 0, err
    assert out.startswith("usage: monai-prune")
    for command in SUBCOMMANDS:
        assert command in out, command
    assert "torch" not in loaded and "monai" not in loaded, loaded


@pytest.mark.parametrize("argv", [("prune", "--help"), ("deploy", "run", "--help"), ("search", "--help")])
def test_subcommand_help_without_torch(argv):
    rc, out, err, loaded = _run(_cli(*argv))
    assert rc == 0, err
    assert out.startswith(f"usage: monai-prune {' '.join(argv[:-1])}")
    assert "torch" not in loaded and "monai" not in loaded, loaded


@pytest.mark.parametrize("argv, message", [
    (("measure", "--network", "{}", "--input-shape", "1"), "expected a shape like 1,1,96,96,96"),
    (("bogus",), "invalid choice: 'bogus'"),
    (("prune", "--network", "{}"), "the following arguments are required"),
])
def test_argument_errors_without_torch(argv, message):
    rc, out, err, loaded = _run(_cli(*argv))
    assert rc == 2 and out == "", (rc, out, err)
    assert message in err and "Traceback" not in err, err
    assert "torch" not in loaded and "monai" not in loaded, loaded


def test_console_script_help():
    """The installed ``monai-prune`` entry point itself (skipped where the package is not installed with it)."""
    script = shutil.which("monai-prune", path=os.path.dirname(sys.executable)) or shutil.which("monai-prune")
    if script is None:
        pytest.skip("no monai-prune console script next to this interpreter")
    rc, out, err, loaded = _run(f"import runpy, sys\nsys.argv = [{script!r}, '--help']\n"
                                f"runpy.run_path({script!r}, run_name='__main__')\n")
    assert rc == 0, err
    assert all(command in out for command in SUBCOMMANDS), out
    assert "torch" not in loaded, loaded


def test_public_names_load_on_use():
    rc, out, err, loaded = _run("""
        import sys
        import monai_prune
        names = set(dir(monai_prune))
        missing = [n for n in monai_prune.__all__ + ["__version__", "pruning", "export", "runtime"] if n not in names]
        assert not missing, missing
        assert "torch" not in sys.modules  # dir() does not import anything
        from monai_prune import Predictor, __version__, count_macs, prune_channels, quantize
        from monai_prune.pruning import prune_channels as defined
        assert prune_channels is defined and monai_prune.prune_channels is defined
        assert all(callable(getattr(monai_prune, n)) for n in monai_prune.__all__)
        assert monai_prune.pruning.PruningPlan is monai_prune.PruningPlan  # submodules stay attributes
        try:
            monai_prune.no_such_name
        except AttributeError as e:
            assert "no_such_name" in str(e)
        else:
            raise AssertionError("monai_prune.no_such_name did not raise AttributeError")
        print(__version__)
    """, timeout=120)
    assert rc == 0, err
    assert out.strip() == "0.1.0"
    assert "torch" in loaded  # the names are real: using them imports torch


def test_package_logger_has_null_handler():
    rc, _, err, loaded = _run("""
        import logging
        import monai_prune
        assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("monai_prune").handlers)
    """)
    assert rc == 0, err
    assert loaded == []
