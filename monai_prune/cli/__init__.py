"""``monai-prune`` command line: demo, prune, measure, recipes, compress-bundle, deploy run, package.

Errors of the user's making (a bad ratio, a missing file, a plan that does not fit) are printed as one line on
stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from typing import TYPE_CHECKING, List, Optional

# torch, MONAI and the heavy parts of monai_prune are imported inside the subcommands that use them, so that
# `monai-prune --help`, `monai-prune <command> --help` and argument errors answer at once (no torch import)
from .errors import InputError, MonaiPruneError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("monai_prune.cli")


def _shape(text: str) -> List[int]:
    try:
        shape = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a shape like 1,1,96,96,96, got {text!r}") from e
    if len(shape) < 3 or any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"expected a shape like 1,1,96,96,96 (B,C,spatial...), got {text!r}")
    return shape


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an error message (torch's and MONAI's run over several lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def load_network_def(text: str) -> dict:
    """A network constructor in MONAI bundle syntax, given inline as JSON or as a .json/.yaml file."""
    if os.path.exists(text):
        from monai.bundle import ConfigParser

        try:
            data = ConfigParser.load_config_file(text)
        except Exception as e:  # json/yaml parse errors, an unknown extension, an unreadable file
            raise InputError(f"--network file {text} is not valid JSON/YAML ({_first_line(e)}); expected an object "
                             'like {"_target_": "monai.networks.nets.UNet", ...}') from e
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"--network must be a JSON object or a file path; {text!r} is neither ({e})") from e
    if isinstance(data, dict) and "_target_" not in data and isinstance(data.get("network_def"), dict):
        data = data["network_def"]
    if not isinstance(data, dict) or "_target_" not in data:
        raise InputError('--network needs a "_target_", e.g. {"_target_": "monai.networks.nets.UNet", ...}; got '
                         + (f"a JSON {type(data).__name__}" if not isinstance(data, dict) else
                            f"an object with keys {sorted(data)}"))
    return data


def build_network(network_def: dict) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    try:
        return ConfigParser({"net": network_def}).get_parsed_content("net")
    except Exception as e:
        cause = e.__cause__ if e.__cause__ is not None else e  # MONAI wraps the constructor's error
        raise InputError(f"could not build the network from {network_def.get('_target_')}: {_first_line(cause)}") from e


def load_weights(path: str) -> dict:
    """A state dict (or a MONAI CheckpointSaver file holding one under "model"), loaded with weights_only=True."""
    from .weights import read_state_dict

    return read_state_dict(path)


def load_weights_into(model: torch.nn.Module, state: dict, path: str) -> None:
    """``model.load_state_dict(state)``, with torch's many-line mismatch report turned into one sentence."""
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise InputError(f"weights {path} do not fit the network: {key} has shape {list(value.shape)} in the file "
                             f"but {list(own[key].shape)} in the network (first mismatch); check --network")
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise InputError(f"weights {path} do not fit the network: " + "; ".join(
            f"{what} {len(keys)} keys (first: {keys[0]})" for what, keys in (("missing", missing),
                                                                            ("unexpected", unexpected)) if keys)
            + "; check --network")
    model.load_state_dict(state)


def _cmd_demo(args) -> int:
    from .demo import DemoConfig, quick_config, run_demo

    config = quick_config(args.out) if args.quick else DemoConfig(out=args.out)
    config.int8 = not args.no_int8
    results = run_demo(config)
    d, p, q = results["dense"], results["pruned"], results.get("int8", {})
    print(f"dense  Dice {d['mean_dice']:.4f}  MACs {d['macs'] / 1e9:.2f}G  params {d['params'] / 1e6:.2f}M")
    print(f"pruned Dice {p['mean_dice']:.4f}  MACs {p['macs'] / 1e9:.2f}G  params {p['params'] / 1e6:.2f}M  "
          f"best backend {p['best_backend']}: {results['speedup_vs_dense_torch'][p['best_backend']]:.2f}x faster "
          "than dense torch eager")
    if q.get("status") == "ok":
        print(f"int8   Dice {q['mean_dice']:.4f}  {q['backend']}: {q['speedup_vs_dense_torch']:.2f}x faster than dense "
              f"torch eager, {q['size_bytes']['fp32'] / q['size_bytes']['int8']:.1f}x smaller than pruned fp32; "
              f"fp32 fallback: {', '.join(q['fallback_layers']) or 'none'}")
        for warning in q["warnings"]:
            print(f"WARNING: {warning}")
    elif q.get("status") == "refused":
        print(f"int8   REFUSED (Dice drop tolerance {q['max_delta']['dice']}): {q['reason']}")
    print(f"report: {results['report']}")
    return 0


def _check_new_output(out: str) -> None:
    """``out`` must not exist, or be an empty folder: a command never mixes its files with the user's."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--out {out} exists and is not a directory: choose a new folder (nothing was written)")
    if os.path.isdir(out) and os.listdir(out):
        raise InputError(f"output {out} exists and is not empty: choose a new folder (nothing was written)")


def _check_free_space(folder: str, out: str, needed: int) -> None:
    """Refuse before writing when the disk cannot hold the output: torch.jit.save aborts the whole process (a C++
    exception in a destructor) when the disk fills up under it, so that failure cannot be caught afterwards."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise InputError(f"no space left on device writing {out}: about {needed / 1e6:.2f} MB needed, "
                         f"{free / 1e6:.2f} MB free (nothing was written)")


def _disk_full(error: BaseException, folder: str) -> bool:
    """Whether ``error`` says the disk is full. torch's C++ writers (torch.save, torch.jit.save) report a full disk as
    a bare ``RuntimeError`` ("file write failed"), so for them the free space left beside the output decides."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    if isinstance(error, RuntimeError):
        try:
            return shutil.disk_usage(folder).free < (1 << 20)
        except OSError:
            return False
    return False


def _cmd_prune(args) -> int:
    import torch

    from . import count_macs, count_params, prune_channels
    from .export import export_onnx, export_torchscript
    from .measure import state_dict_bytes
    from .utils import atomic_path, atomic_write_text, give_umask_mode

    out = args.out
    _check_new_output(out)
    network_def = load_network_def(args.network)
    model = build_network(network_def)
    if args.weights:
        load_weights_into(model, load_weights(args.weights), args.weights)
    names = ("plan.json", "model.pt", "model.ts", "model.onnx")
    targets = {name: os.path.join(out, name) for name in names}
    example = torch.zeros(*args.input_shape)
    options = {"importance": args.importance, "round_to": args.round_to, "ignore": args.ignore or [],
               "global_pruning": args.global_pruning}
    if args.target_macs is not None:
        options["target_macs"] = args.target_macs
    pruned, plan = prune_channels(model, example, ratio=args.ratio if args.target_macs is None else None,
                                  network_def=network_def, **options)
    # every file goes into a private folder beside OUT, renamed onto OUT when all are written: a failure (a full
    # disk, an export error) leaves no half-written output
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    _check_free_space(parent, out, 3 * state_dict_bytes(pruned) + (256 << 10))  # model.pt, .ts, .onnx + plan, code
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.", dir=parent)
    give_umask_mode(staging)  # mkdtemp's folder is private; OUT gets the usual permissions
    staged = {name: os.path.join(staging, name) for name in names}
    writing = os.path.join(out, "plan.json")
    try:
        plan.save(staged["plan.json"])
        writing = targets["model.pt"]
        with atomic_path(staged["model.pt"]) as tmp:
            torch.save(pruned.state_dict(), tmp)
        writing = targets["model.ts"]
        ts = export_torchscript(pruned, example, staged["model.ts"])
        writing = targets["model.onnx"]
        onnx = export_onnx(pruned, example, staged["model.onnx"])
        summary = {"macs_before": count_macs(model, example), "macs_after": count_macs(pruned, example),
                   "params_before": count_params(model), "params_after": count_params(pruned),
                   "torchscript_max_abs_diff": ts.max_abs_diff, "onnx_max_abs_diff": onnx.max_abs_diff,
                   "plan_checksum": plan.checksum, "files": targets}
        writing = os.path.join(out, "summary.json")
        atomic_write_text(os.path.join(staging, "summary.json"), json.dumps(summary, indent=1))
        writing = out
        os.replace(staging, out)  # onto a missing or empty folder
    except Exception as e:
        full = _disk_full(e, staging)
        shutil.rmtree(staging, ignore_errors=True)
        if full:
            raise InputError(f"no space left on device writing {writing}: free some space or choose another --out "
                             "(nothing was written)") from e
        raise
    print(f"MACs {summary['macs_before'] / 1e9:.3f}G -> {summary['macs_after'] / 1e9:.3f}G "
          f"({summary['macs_after'] / summary['macs_before']:.2f}x), params {summary['params_before'] / 1e6:.2f}M -> "
          f"{summary['params_after'] / 1e6:.2f}M; wrote {', '.join(targets.values())}")
    return 0


def _cmd_measure(args) -> int:
    import torch

    from . import apply_plan, count_macs, count_params
    from .pruning import PruningPlan

    model = build_network(load_network_def(args.network))
    if args.plan:
        model = apply_plan(model, PruningPlan.load(args.plan))
    example = torch.zeros(*args.input_shape)
    macs, per_layer = count_macs(model, example, per_layer=True)
    result = {"macs": macs, "params": count_params(model)}
    if args.per_layer:
        result["per_layer_macs"] = per_layer
    print(json.dumps(result, indent=1))
    return 0


def _cmd_recipes(args) -> int:
    from .bundle import list_recipes

    for recipe in list_recipes():
        print(f"{recipe['name']:<22} {recipe['path']}\n{'':<22} {recipe['description']}")
    return 0


def _rounds(text: str) -> int:
    """A count of timed rounds: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} rounds: give at least 1")
    return value


def _override(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. prune#final_sparsity=0.7), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _schedule_ids(config, prefix: str = "") -> List[str]:
    """Ids (``prune#schedule``) of the recipe's sparsity schedules: components built from plain recipe values."""
    found: List[str] = []
    if isinstance(config, dict):
        if str(config.get("_target_", "")).startswith("monai_prune.schedules."):
            return [prefix]
        for key, value in config.items():
            found += _schedule_ids(value, f"{prefix}#{key}" if prefix else str(key))
    return found


def check_recipe_overrides(recipe: str, overrides: dict) -> None:
    """Build the recipe's sparsity schedules with the ``--set`` values, so a bad value (``prune#final_sparsity=1.5``)
    is refused now rather than after the dense model was evaluated, when the trainer is built."""
    from monai.bundle import ConfigParser

    from .bundle import recipe_path
    from .errors import ConfigError

    if not overrides:
        return
    parser = ConfigParser(ConfigParser.load_config_file(recipe_path(recipe)))
    for key, value in overrides.items():
        if key in parser:
            parser[key] = value
    for schedule in _schedule_ids(parser.get()):
        try:
            parser.get_parsed_content(schedule)
        except Exception as e:
            error = _our_error(e)
            if error is None:  # it needs the bundle (e.g. @network): checked when the bundle's trainer is built
                continue
            section = schedule.split("#", 1)[0] + "#"
            given = [f"{k}={json.dumps(v)}" for k, v in overrides.items() if k.startswith(section)]
            raise ConfigError(f"{schedule}" + (f" with --set {', '.join(given)}" if given else "")
                              + f": {error} (nothing was written)") from e


def _cmd_compress_bundle(args) -> int:
    from .bundle import compress_bundle

    check_recipe_overrides(args.recipe, dict(args.set or []))
    result = compress_bundle(args.src, args.recipe, args.out, epochs=args.epochs, overrides=dict(args.set or []),
                             int8=args.int8, calibration_samples=args.calibration, target_device=args.target_device,
                             dry_run=args.dry_run, repeats=args.repeats, input_shape=args.input_shape,
                             allow_degraded=args.allow_degraded)
    if args.dry_run:
        print("dry run: nothing written. compress-bundle would:")
        for i, step in enumerate(result["steps"], 1):
            print(f"  {i}. {step}")
        return 0
    print(f"MACs x{result['macs']['after'] / result['macs']['before']:.3f}, params "
          f"x{result['params']['after'] / result['params']['before']:.3f}, latency {result['latency_s']['ratio']:.2f}x "
          f"faster on {result['latency_s']['device']}; " + ", ".join(
              f"{k} {v['before']:.4f} -> {v['after']:.4f}" for k, v in result["metrics"].items()))
    print(f"wrote {args.out} (fidelity card: docs/fidelity_card.md, .json)")
    print()
    print(result["card"].to_markdown())  # its first line: PASS, DEGRADED or UNGUARDED, and the class that lost most
    return 0


def app_script(app: str) -> str:
    """``app.py`` of a deploy app: a folder or file path, or a name under the repository's ``apps/``."""
    from .errors import InputError

    candidates = [app, os.path.join(app, "app.py"),
                  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "apps", app, "app.py")]
    for candidate in candidates:
        if os.path.isfile(candidate) and candidate.endswith(".py"):
            return os.path.abspath(candidate)
    raise InputError(f"no deploy app {app!r}: give an app folder, its app.py, or one of apps/ (ct_seg_compressed, "
                     "xray_cls_compressed)")


def _cmd_deploy_run(args) -> int:
    import subprocess

    script = app_script(args.app)
    return subprocess.run([sys.executable, script, *args.app_args]).returncode


def _cmd_serve(args) -> int:
    from .deploy.serve import serve

    summary = serve(app_script(args.app), args.model, args.output, studies=args.study or (), watch=args.watch,
                    app_args=args.app_args, settle=args.settle, poll=args.poll, max_studies=args.max_studies,
                    idle_exit=args.idle_exit)
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    return 0 if summary["failed"] == 0 else 1


def _cmd_tune_pipeline(args) -> int:
    from .deploy.pipeline_knobs import tune_pipeline
    from .deploy.tuned_bundle import check_target, write_tuned_bundle
    from .utils import atomic_write_text

    if args.write_bundle:
        check_target(args.bundle, args.write_bundle)
    result = tune_pipeline(args.bundle, args.images, dense=args.dense, backend=args.backend,
                           precision=args.precision, overlaps=args.overlap, sw_batch_sizes=args.sw_batch_size,
                           roi_sizes=args.roi, pixdims=args.pixdim, max_delta=args.max_delta, repeats=args.repeats)
    print(result["markdown"])
    if args.json:
        atomic_write_text(args.json, json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2))
        print(f"wrote {args.json}")
    if args.write_bundle:
        print(f"wrote {write_tuned_bundle(result, args.write_bundle)} (its inference config runs the shipped "
              "setting; configs/metadata.json compression.pipeline_knobs says what it saved and cost)")
    return 0


def _cmd_package(args) -> int:
    from .deploy.package import package_app

    script = app_script(args.app)
    result = package_app(os.path.dirname(script), args.out, model=args.model, name=args.name, cpu=args.cpu,
                         memory=args.memory, gpu=args.gpu, build=args.build, tag=args.tag)
    print(f"wrote {result['folder']} ({len(result['files'])} files + vendored monai_prune; "
          f"{len(result['requirements'])} pinned requirements)")
    if args.triton_repo:
        from .deploy.models import select_model
        from .deploy.triton import write_triton_repository

        choice = select_model(args.model, args.triton_backend, "fp32") if args.model else None
        if choice is None or not choice.path.endswith((".onnx", ".xml")):
            raise InputError("--triton-repo needs --model <compressed bundle> with models/model.onnx")
        folder = write_triton_repository(choice.path, args.triton_repo, result["model"]["name"],
                                         backend=args.triton_backend,
                                         metadata={"sha256": choice.sha256, "version": choice.version})
        print(f"wrote Triton model {folder}")
    print(result["packager"]["message"])
    if args.build and not result["build"].get("ran"):
        return 1
    return 0 if result["build"].get("returncode", 0) == 0 else 1


def _guardrails(args) -> dict:
    """Guardrails from ``--guardrails`` (JSON text or a .json file) and the shortcut flags (which win)."""
    from .errors import ConfigError

    guardrails: dict = {}
    if args.guardrails:
        text = args.guardrails
        if os.path.isfile(text):
            with open(text, encoding="utf-8") as f:
                text = f.read()
        try:
            guardrails = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--guardrails must be JSON (or a JSON file), e.g. '{{\"max_delta_dice\": 0.02}}': {e}")
        if not isinstance(guardrails, dict):
            raise ConfigError(f"--guardrails must be a JSON object, got {type(guardrails).__name__}")
    for key in ("max_delta_dice", "max_hd95_increase_mm", "max_latency_ratio", "target_macs"):
        if getattr(args, key) is not None:
            guardrails[key] = getattr(args, key)
    if args.min_dice:
        floors = {}
        for item in args.min_dice:
            name, sep, value = item.rpartition("=")
            try:
                floors[name if sep else "*"] = float(value)
            except ValueError:
                raise ConfigError(f"--min-dice takes FLOOR or CLASS=FLOOR, got {item!r}") from None
        guardrails["min_dice"] = floors.pop("*") if list(floors) == ["*"] else floors
        if "*" in floors:
            raise ConfigError("--min-dice: give one FLOOR for every class or CLASS=FLOOR entries, not both")
    return guardrails


def _csv(kind=str):
    def parse(text: str):
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}") from None

    return parse


def _cmd_search(args) -> int:
    from .search import SearchConfig
    from .search_workflow import SearchDemoConfig, check_search_demo, quick_search_config, run_search_demo

    guardrails = _guardrails(args)
    defaulted = not guardrails
    if defaulted:
        guardrails = {"max_delta_dice": 0.02}
    options = {k: getattr(args, k) for k in ("ratios", "strategy", "bisect_steps", "layer_modes", "precisions",
                                              "backends", "objective", "int8_keep_fp32") if getattr(args, k) is not None}
    search_config = SearchConfig(**options)
    config = quick_search_config() if args.quick else SearchDemoConfig()
    if args.finetune_epochs is not None:
        config.finetune_epochs = args.finetune_epochs
    check_search_demo(args.out, guardrails, search_config, config)  # refused before anything is trained or written
    if defaulted:
        logging.getLogger(__name__).info("no guardrails given: max_delta_dice 0.02 (per class)")
    result = run_search_demo(args.out, guardrails, search_config, config)
    print(result.table())
    print()
    print(result.card.to_markdown())
    print(f"chosen model: {result.paths['chosen']}; report: monai-prune report {args.out}")
    return 0


def _cmd_report(args) -> int:
    from .report import write_search_report

    written = write_search_report(args.run_dir)
    print(f"wrote {written['report']} and " + ", ".join(os.path.basename(p) for k, p in written.items()
                                                        if k != "report"))
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monai-prune", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train, prune, fine-tune, export and benchmark a 3D UNet on synthetic CT")
    demo.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    demo.add_argument("--quick", action="store_true", help="a tiny run (tens of seconds) for smoke tests")
    demo.add_argument("--no-int8", action="store_true", help="skip quantizing the pruned model to int8")
    demo.set_defaults(func=_cmd_demo)

    prune = sub.add_parser("prune", help="prune a network's channels; write plan.json, model.pt, model.ts, model.onnx")
    prune.add_argument("--network", required=True, help='network in bundle syntax: JSON or a .json/.yaml file')
    prune.add_argument("--weights", help="state dict to load first (weights_only)")
    prune.add_argument("--input-shape", type=_shape, required=True, help="example input shape, e.g. 1,1,96,96,96")
    prune.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed per group (0.5)")
    prune.add_argument("--target-macs", type=float, help="instead of --ratio: keep this fraction of the MACs")
    prune.add_argument("--importance", default="l1", help="l1 | l2 | bn_scale | random (taylor needs data: use Python)")
    prune.add_argument("--round-to", type=int, help="channel multiple, e.g. 8")
    prune.add_argument("--ignore", nargs="*", help="layer names never to prune")
    prune.add_argument("--global-pruning", action="store_true", help="rank channels across groups")
    prune.add_argument("--out", required=True, help="output folder")
    prune.set_defaults(func=_cmd_prune)

    measure = sub.add_parser("measure", help="MACs and parameters of a network (optionally after a plan)")
    measure.add_argument("--network", required=True)
    measure.add_argument("--plan", help="plan.json to apply first")
    measure.add_argument("--input-shape", type=_shape, required=True)
    measure.add_argument("--per-layer", action="store_true")
    measure.set_defaults(func=_cmd_measure)

    recipes = sub.add_parser("recipes", help="list the packaged compression recipes (bundle config overlays)")
    recipes.set_defaults(func=_cmd_recipes)

    bundle = sub.add_parser("compress-bundle", help="compress a MONAI bundle into a new bundle (source untouched)")
    bundle.add_argument("src", help="the source bundle folder (with configs/train.json, metadata.json, models/model.pt)")
    bundle.add_argument("--recipe", required=True, help="a packaged recipe name (see `monai-prune recipes`) or a file")
    bundle.add_argument("--out", required=True, help="the new bundle folder (must not exist)")
    bundle.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the bundle's max_epochs)")
    bundle.add_argument("--set", type=_override, action="append", metavar="KEY=VALUE",
                        help="recipe or bundle parameter, e.g. --set prune#final_sparsity=0.7 --set image_size=[96,96] "
                             "(repeatable; prune#input_shape defaults to the bundle's metadata input)")
    bundle.add_argument("--int8", choices=["onnxruntime", "openvino", "auto"], help="also write an int8 model")
    bundle.add_argument("--calibration", type=int, default=8, help="int8 calibration samples (default 8)")
    bundle.add_argument("--target-device", default="cpu", help="where latency is measured (cpu)")
    bundle.add_argument("--repeats", type=_rounds, default=5,
                        help="timed rounds for the latency ratios and the int8 backend choice (median; default 5)")
    bundle.add_argument("--allow-degraded", action="store_true",
                        help="write the bundle even if it breaks the recipe's guardrails (marked DEGRADED)")
    bundle.add_argument("--input-shape", type=_shape, help="example input for MACs, exports and latency, e.g. "
                        "1,1,96,96,96 (default: the metadata's network_data_format)")
    bundle.add_argument("--dry-run", action="store_true", help="print what would be done; write nothing")
    bundle.set_defaults(func=_cmd_compress_bundle)

    deploy = sub.add_parser("deploy", help="MONAI Deploy apps for compressed bundles")
    deploy_sub = deploy.add_subparsers(dest="deploy_command", required=True)
    run = deploy_sub.add_parser("run", help="run a deploy app locally: deploy run APP -i DICOM_DIR -o OUT -m BUNDLE",
                                description="Runs the app's app.py with the remaining arguments (-i, -o, -m, --backend "
                                            "auto|torchscript|onnxruntime|openvino, --precision auto|fp32|int8, "
                                            "--nifti); its exit code is returned.")
    run.add_argument("app", help="app folder, app.py, or a name under apps/ (ct_seg_compressed, xray_cls_compressed)")
    run.add_argument("app_args", nargs=argparse.REMAINDER, help="arguments for the app")
    run.set_defaults(func=_cmd_deploy_run)

    serve = sub.add_parser(
        "serve", usage="monai-prune serve APP -m BUNDLE -o OUT (--study DIR [DIR ...] | --watch INBOX) [options] "
                       "[-- app options]", help="resident mode: run a deploy app on study after study in one process (imports and model "
                      "loaded once)",
        description="Runs APP on each --study folder, then on each study folder that appears in --watch (ready when "
                    "it holds a .ready file or stayed unchanged for --settle seconds), in one process: imports and "
                    "the loaded model are paid for the first study only. Results go to OUT/<study folder name>/, "
                    "one line per study to OUT/serve.jsonl. Options after -- go to the app (e.g. -- --backend "
                    "openvino --precision int8). SIGTERM/Ctrl-C: the current study finishes, then it exits.")
    serve.add_argument("app", help="app folder, app.py, or a name under apps/ (ct_seg_compressed, xray_cls_compressed)")
    serve.add_argument("-m", "--model", required=True, help="the compressed bundle")
    serve.add_argument("-o", "--output", required=True, help="output root: one result folder per study")
    serve.add_argument("--study", nargs="+", help="study folders (DICOM) to process, in order")
    serve.add_argument("--watch", help="inbox folder: every study folder that appears in it is processed")
    serve.add_argument("--settle", type=float, default=5.0, help="seconds a watched study must stay unchanged "
                                                                  "(default 5; a .ready file skips the wait)")
    serve.add_argument("--poll", type=float, default=1.0, help="seconds between looks at the inbox (default 1)")
    serve.add_argument("--max-studies", type=int, default=None, help="stop after this many studies")
    serve.add_argument("--idle-exit", type=float, default=None,
                       help="with --watch: stop after this many seconds without a new study")
    serve.set_defaults(func=_cmd_serve)

    tune = sub.add_parser(
        "tune-pipeline", help="measure sliding-window overlap, sw_batch_size, roi and inference resolution of a "
                              "compressed bundle: per-class Dice and end-to-end seconds",
        description="Runs the bundle's own preprocessing, inferer and postprocessing (configs/inference.json, "
                    "checked against its sha256; SaveImage left out) on --images at its own setting and with one "
                    "knob changed at a time, then the passing knobs combined. Each setting: end-to-end seconds "
                    "per image, per-class Dice against the reference labels (--dense, else the compressed model at "
                    "the bundle's setting) and ΔDice against the baseline; it passes when every class keeps "
                    "ΔDice >= -max-delta. Prints a Markdown table and the --set overrides that ship each passing "
                    "setting.")
    tune.add_argument("bundle", help="the compressed bundle folder")
    tune.add_argument("--images", nargs="+", required=True, help="image files (or DICOM series folders) to run on")
    tune.add_argument("--dense", help="dense reference: a TorchScript file (ckpt_export) or a bundle folder")
    tune.add_argument("--backend", default="auto", choices=["auto", "torchscript", "onnxruntime", "openvino"])
    tune.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8"])
    tune.add_argument("--overlap", nargs="+", metavar="F", help="sliding-window overlaps, e.g. 0.5 0.25 0.1")
    tune.add_argument("--sw-batch-size", dest="sw_batch_size", nargs="+", metavar="N", help="e.g. 1 2 4")
    tune.add_argument("--roi", nargs="+", metavar="X,Y,Z", help="window sizes, e.g. 96,96,96 64,64,64")
    tune.add_argument("--pixdim", nargs="+", metavar="X,Y,Z", help="inference spacings in mm, e.g. 1.5,1.5,2 2,2,2")
    tune.add_argument("--max-delta", dest="max_delta", type=float, default=0.01,
                      help="largest per-class Dice drop against the baseline (default 0.01)")
    tune.add_argument("--repeats", type=int, default=1, help="timed runs per image and setting (median; default 1)")
    tune.add_argument("--json", help="also write the rows to this JSON file")
    tune.add_argument("--write-bundle", dest="write_bundle", metavar="OUT",
                      help="write a copy of the bundle whose inference config (and model.ts) runs the passing "
                           "setting that saves most (the combined row when it passed), with the measurements in its "
                           "metadata and fidelity card; the source bundle is never changed")
    tune.set_defaults(func=_cmd_tune_pipeline)

    package = sub.add_parser("package", help="write a MAP-ready folder for a deploy app (+ a Triton model repository)")
    package.add_argument("app", help="app folder, app.py, or a name under apps/")
    package.add_argument("--out", required=True, help="the folder to write (must not exist)")
    package.add_argument("--model", help="the compressed bundle to ship in models/<name>/ (sha256 verified)")
    package.add_argument("--name", help="model folder name (default: the bundle folder's name)")
    package.add_argument("--cpu", type=float, default=2, help="app.yaml resources.cpu (default 2)")
    package.add_argument("--memory", default="4Gi", help="app.yaml resources.memory (default 4Gi)")
    package.add_argument("--gpu", type=int, default=0, help="app.yaml resources.gpu (default 0: CPU runtimes)")
    package.add_argument("--triton-repo", help="also add the model to this Triton model repository folder")
    package.add_argument("--triton-backend", choices=["onnxruntime", "openvino"], default="onnxruntime")
    package.add_argument("--build", action="store_true", help="build the MAP image (needs Docker, holoscan-cli<=4.2)")
    package.add_argument("--tag", help="image tag for --build, e.g. spleen-seg:1.0")
    package.set_defaults(func=_cmd_package)

    search = sub.add_parser("search", help="find the most compressed model that keeps every per-class guardrail "
                                           "(built-in synthetic CT)",
                            description="Prunes the demo's spleen-style UNet at several ratios, fine-tunes each with "
                                        "distillation, measures per-class Dice and sliding-window latency on every "
                                        "backend (fp32 and int8), and keeps the fastest candidate that holds every "
                                        "guardrail. Re-run with the same --out to resume. Exit 2 when none holds.")
    search.add_argument("--out", default="search_output", help="output folder; an earlier search there is resumed")
    search.add_argument("--quick", action="store_true", help="tiny data and epochs (seconds-to-minutes; for tests)")
    search.add_argument("--guardrails", help='JSON object or .json file, e.g. \'{"max_delta_dice": 0.02}\'')
    search.add_argument("--max-delta-dice", dest="max_delta_dice", type=float, help="largest Dice drop, per class")
    search.add_argument("--min-dice", dest="min_dice", action="append", metavar="[CLASS=]FLOOR",
                        help="Dice floor for every class, or per class (repeatable)")
    search.add_argument("--max-hd95-increase-mm", dest="max_hd95_increase_mm", type=float)
    search.add_argument("--max-latency-ratio", dest="max_latency_ratio", type=float)
    search.add_argument("--target-macs", dest="target_macs", type=float)
    search.add_argument("--ratios", type=_csv(float), help="channel ratios, e.g. 0.25,0.5,0.75")
    search.add_argument("--strategy", choices=["grid", "bisect"])
    search.add_argument("--bisect-steps", dest="bisect_steps", type=int)
    search.add_argument("--layers", dest="layer_modes", type=_csv(), help="uniform and/or sensitivity")
    search.add_argument("--precision", dest="precisions", type=_csv(), help="fp32 and/or int8 (default both)")
    search.add_argument("--backends", type=_csv(), help="runtimes to time (default: every installed one)")
    search.add_argument("--objective", choices=["latency", "macs", "size"])
    search.add_argument("--int8-keep-fp32", dest="int8_keep_fp32", choices=["none", "sensitivity"],
                        help="sensitivity: keep fp32 the layers whose int8 alone costs more than the tolerance (slow)")
    search.add_argument("--finetune-epochs", dest="finetune_epochs", type=int, help="distillation epochs per candidate")
    search.set_defaults(func=_cmd_search, precisions=["fp32", "int8"])

    report = sub.add_parser("report", help="report.md + PNGs (Pareto, per-class Dice, sensitivity, overlay) of a search")
    report.add_argument("run_dir", help="the output folder of monai-prune search")
    report.set_defaults(func=_cmd_report)
    return parser


def _our_error(error: Optional[BaseException]) -> Optional[MonaiPruneError]:
    """The first :class:`MonaiPruneError` behind ``error``: MONAI's ConfigParser raises ``RuntimeError("Failed to
    instantiate component ...")`` from what a component's constructor raised. Only ``RuntimeError`` wrappers are
    looked through by their implicit ``__context__``, so a programming error (NameError, TypeError, ...) raised while
    handling one of ours still shows its own traceback."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, MonaiPruneError):
            return error
        seen.add(id(error))
        if error.__cause__ is not None:
            error = error.__cause__
        elif isinstance(error, RuntimeError) and not error.__suppress_context__:
            error = error.__context__
        else:
            return None
    return None


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def main(argv: Optional[List[str]] = None) -> int:
    # holoscan (pulled in by `import monai` when MONAI Deploy is installed) warns about the stack size on import; it
    # concerns its GPU apps, not this command, and would turn every one-line error into three lines
    warnings.filterwarnings("ignore", message="Current stack size", category=RuntimeWarning)
    parser = make_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    passed: List[str] = []
    if argv[:1] == ["serve"] and "--" in argv:  # serve ... -- <app options>
        cut = argv.index("--")
        argv, passed = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if args.command == "serve":
        args.app_args = passed
    from .utils import configure_logging  # imports torch: only once the arguments are valid

    configure_logging(logging.DEBUG if args.verbose else logging.INFO)

    def fail(message) -> int:
        print(f"monai-prune {args.command}: error: {_one_line(message)}", file=sys.stderr)
        return 2

    try:
        return args.func(args)
    except MonaiPruneError as e:
        return fail(e)
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        return fail(e)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        where = e.filename2 or e.filename
        return fail(f"no space left on device writing {where if where else 'the output'} (nothing more was written)")
    except Exception as e:
        ours = _our_error(e)
        if ours is None:
            raise
        return fail(ours)


if __name__ == "__main__":
    sys.exit(main())
