"""``monai-prune prune`` and ``monai-prune measure``: a network given in MONAI bundle syntax, pruned or measured.

The network helpers they use (``load_network_def``, ``build_network``, ``load_weights``, ``load_weights_into``) are
looked up on :mod:`monai_prune.cli` when a command runs, where they live and where tests replace them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile

from ..errors import InputError
from .common import parse_shape


def add_parsers(sub) -> None:
    """The ``prune`` and ``measure`` subcommands."""
    prune = sub.add_parser("prune", help="prune a network's channels; write plan.json, model.pt, model.ts, model.onnx")
    prune.add_argument("--network", required=True, help='network in bundle syntax: JSON or a .json/.yaml file')
    prune.add_argument("--weights", help="state dict to load first (weights_only)")
    prune.add_argument("--input-shape", type=parse_shape, required=True,
                       help="example input shape, e.g. 1,1,96,96,96")
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
    measure.add_argument("--input-shape", type=parse_shape, required=True)
    measure.add_argument("--per-layer", action="store_true")
    measure.set_defaults(func=_cmd_measure)


def check_new_output(out: str) -> None:
    """``out`` must not exist, or be an empty folder: a command never mixes its files with the user's."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--out {out} exists and is not a directory: choose a new folder (nothing was written)")
    if os.path.isdir(out) and os.listdir(out):
        raise InputError(f"output {out} exists and is not empty: choose a new folder (nothing was written)")


def check_free_space(folder: str, out: str, needed: int) -> None:
    """Refuse before writing when the disk cannot hold the output: torch.jit.save aborts the whole process (a C++
    exception in a destructor) when the disk fills up under it, so that failure cannot be caught afterwards."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise InputError(f"no space left on device writing {out}: about {needed / 1e6:.2f} MB needed, "
                         f"{free / 1e6:.2f} MB free (nothing was written)")


def disk_full(error: BaseException, folder: str) -> bool:
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

    from .. import count_macs, count_params, prune_channels
    from ..export import export_onnx, export_torchscript
    from ..measure import state_dict_bytes
    from ..utils import atomic_path, atomic_write_text, give_umask_mode
    from . import build_network, load_network_def, load_weights, load_weights_into

    out = args.out
    check_new_output(out)
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
    check_free_space(parent, out, 3 * state_dict_bytes(pruned) + (256 << 10))  # model.pt, .ts, .onnx + plan, code
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
        full = disk_full(e, staging)
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

    from .. import apply_plan, count_macs, count_params
    from ..pruning import PruningPlan
    from . import build_network, load_network_def

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
