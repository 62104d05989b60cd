"""The library's plots leave the user's matplotlib alone: no backend switch, no pyplot, PNGs still written."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "monai_prune"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Every public function that writes a PNG, called on small made-up inputs, after the "user" chose a non-Agg backend.
SCRIPT = textwrap.dedent('''
    import json, os, sys

    import matplotlib

    matplotlib.use("svg")  # the user's choice, which our plots must leave as it is
    os.umask(0o027)
    out = sys.argv[1]

    import numpy as np

    import monai_prune  # noqa: F401
    from monai_prune.quantization.sensitivity import ALL_LAYERS, QuantSensitivityResult
    from monai_prune.report import plot_accuracy_vs_latency, plot_overlay, plot_pareto, plot_per_class
    from monai_prune.schedules import CubicSchedule
    from monai_prune.sensitivity import SensitivityResult

    written = {}
    results = {"dense": {"latency_s": {"torch": 0.5, "onnxruntime": 0.3}, "mean_dice": 0.9},
               "pruned": {"latency_s": {"torch": 0.4, "onnxruntime": 0.2}, "mean_dice": 0.88},
               "int8": {"status": "ok", "latency_s": 0.1, "mean_dice": 0.86, "backend": "onnxruntime"}}
    path = os.path.join(out, "accuracy.png")
    with open(path, "wb") as f:
        f.write(b"an older file, replaced")
    written["accuracy"] = plot_accuracy_vs_latency(results, path)

    def measured(a, b):
        return {"per_class": {"spleen": {"dice": a}, "liver": {"dice": b}}}

    rows = [dict(metric="dice", backend=b, precision=p, passes=ok, ratio=r, speedup=s, size_ratio=z, key=f"k{i}",
                 measured=measured(0.9 - r / 5, 0.8 - r / 4))
            for i, (b, p, ok, r, s, z) in enumerate([("torch", "fp32", True, 0.25, 1.2, 0.6),
                                                     ("onnxruntime", "fp32", True, 0.5, 1.8, 0.3),
                                                     ("onnxruntime", "int8", False, 0.75, 2.5, 0.1)])]
    written["pareto"] = plot_pareto({"measured": measured(0.9, 0.8)}, rows, rows[1], os.path.join(out, "pareto.png"))
    per_class = {"spleen": {"dice": {"before": 0.9, "after": 0.88}}, "liver": {"dice": {"before": 0.8, "after": 0.7}}}
    written["per_class"] = plot_per_class(per_class, os.path.join(out, "per_class.png"))
    image = np.random.default_rng(0).random((16, 16))
    examples = {"dense_image": image, "dense_label": (image > 0.7).astype(int),
                "dense_pred": (image > 0.65).astype(int), "chosen_pred": (image > 0.6).astype(int)}
    written["overlay"] = plot_overlay(examples, os.path.join(out, "overlay.png"))
    written["schedule"] = CubicSchedule(final=0.6, start_epoch=1, end_epoch=8).plot(os.path.join(out, "schedule.png"))

    layers, ratios = ["enc", "dec"], [0.25, 0.5]
    table = [dict(layer=layer, ratio=r, channels_before=16, channels_kept=8, macs_fraction=0.8, params_fraction=0.8,
                  metrics={"dice": 0.9 - r / (i + 2)}, delta={"dice": -r / (i + 2)})
             for i, layer in enumerate(layers) for r in ratios]
    sensitivity = SensitivityResult(dense={"dice": 0.9}, ratios=ratios, layers=layers, table=table)
    written["sensitivity"] = sensitivity.plot(os.path.join(out, "sub", "sensitivity.png"))
    written["sensitivity_heat"] = sensitivity.plot(os.path.join(out, "heat.png"), curves=False)
    qtable = [dict(layer=layer, nodes=["a"], int8_nodes=["a"], macs=10, macs_fraction=0.5, metrics={"dice": 0.89},
                   delta={"dice": -0.01 * (i + 1)}) for i, layer in enumerate(layers)]
    reference = dict(layer=ALL_LAYERS, nodes=[], int8_nodes=[], macs=20, macs_fraction=1.0, metrics={"dice": 0.85},
                     delta={"dice": -0.05})
    quant = QuantSensitivityResult(fp32={"dice": 0.9}, layers=layers, table=qtable, all_int8=reference,
                                   backend="onnxruntime")
    written["quant_sensitivity"] = quant.plot(os.path.join(out, "quant.png"), max_delta=0.015)

    pyplot_imported = "matplotlib.pyplot" in sys.modules  # before get_backend, which may resolve "auto" via pyplot
    print(json.dumps({"written": written, "backend": matplotlib.get_backend(), "pyplot": pyplot_imported}))
''')


def test_plots_keep_the_users_backend_and_write_pngs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backend"] == "svg", "plotting switched the user's matplotlib backend"
    assert not report["pyplot"], "plotting imported matplotlib.pyplot"
    written = report["written"]
    assert len(written) == 8
    for name, path in written.items():
        data = Path(path).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 2_000, name
        assert os.stat(path).st_mode & 0o777 == 0o640, name  # 0o666 under the umask 027, not mkstemp's 0600
    assert written["accuracy"] == str(out / "accuracy.png")  # same return values as before: the path given
    assert written["sensitivity"] == str(out / "sub" / "sensitivity.png")  # its folder created
    every_file = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert every_file == sorted(str(Path(p).relative_to(out)) for p in written.values())  # no temporary files left


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, 0, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                yield node, node.level, node.module or "", alias.name


def test_no_module_switches_the_backend_or_imports_pyplot():
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = lambda node: f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"  # noqa: E731
        for node, _, module, name in _imports(tree):
            if module == "matplotlib.pyplot" or module.startswith("matplotlib.pyplot.") or (
                    module == "matplotlib" and name in ("pyplot", "use")) or module == "pylab":
                offences.append(f"{where(node)} imports {module}{'.' + name if name else ''}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr in ("use", "switch_backend") and \
                        isinstance(func.value, ast.Name) and func.value.id in ("matplotlib", "mpl", "plt", "pyplot"):
                    offences.append(f"{where(node)} calls {func.value.id}.{func.attr}")
            elif isinstance(node, ast.Constant) and node.value in ("matplotlib.pyplot", "pylab"):
                offences.append(f"{where(node)} names {node.value!r} (a dynamic import?)")
    assert not offences, offences


def test_plotting_module_is_a_leaf():
    path = PACKAGE / "_plotting.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node, level, module, _ in _imports(tree):
        top = module.split(".")[0]
        assert level == 0 and top != "monai_prune", f"line {node.lineno}: _plotting imports first-party {module}"
        assert top in sys.stdlib_module_names or top == "matplotlib", f"line {node.lineno}: imports {module}"
    # matplotlib only inside functions: importing the module loads nothing heavy
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [n for n in top_level for _, _, m, _ in _imports(n) if m.split(".")[0] == "matplotlib"]
    proc = subprocess.run([sys.executable, "-c", "import sys, monai_prune._plotting; "
                           "print('matplotlib' in sys.modules)"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
