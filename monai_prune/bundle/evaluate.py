"""Evaluate a bundle's network with the bundle's own evaluator, and time its inferer."""

from __future__ import annotations

import copy
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..bundle_configs import check_schedule, instantiate
from ..errors import ConfigError
from .checks import NOT_FOR_TRAINING, config_get
from .workspace import SigtermGuard

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------- helpers
def bump_version(version: str) -> str:
    parts = [int(p) if p.isdigit() else 0 for p in str(version).split(".")[:3]] + [0, 0, 0]
    return f"{parts[0]}.{parts[1] + 1}.0"


def dense_network(parser) -> Tuple[Dict[str, Any], nn.Module]:
    """``(network_def, network)``: the dense network as the run builds it, from the config with the ``--set``
    overrides applied (a zoo config may pass arguments that newer MONAI removed, e.g. SwinUNETR ``img_size``, which
    users override with ``--set network_def#...``), built by a parser of its own so it is not the instance the
    trainer prunes."""
    from monai.bundle import ConfigParser

    definition = copy.deepcopy(parser.get("network_def"))
    return definition, ConfigParser(copy.deepcopy(parser.get())).get_parsed_content("network_def")


def validation_label_mode(metadata: Dict[str, Any], raw: Dict[str, Any]) -> Optional[str]:
    """``"multi_label"`` (sigmoid outputs, overlapping channels: BraTS), ``"multi_class"`` or None (decided from the
    data), from the metadata and the validation postprocessing (instantiated: a zoo config often refers to it)."""
    from monai.bundle import ConfigParser

    from ..fidelity import label_mode_from_bundle

    try:
        post = ConfigParser(copy.deepcopy(raw)).get_parsed_content("validate#postprocessing", instantiate=True)
    except Exception:  # no such id, or not buildable alone: let the data decide
        post = None
    return label_mode_from_bundle(metadata, post)


def evaluate_network(raw: Dict[str, Any], network: nn.Module, names: List[str],
              guard: SigtermGuard, label_mode: Optional[str] = None) -> Tuple[Dict[str, float], Dict[str, Any]]:
    """Run the bundle's own validation evaluator (its data, inferer, postprocessing, metrics) on ``network``,
    without its handlers (no checkpoint is written): its key/additional metrics, and our per-class metrics
    (:class:`~monai_prune.fidelity.PerClassMetrics`) from the same postprocessed outputs."""
    from monai.bundle import ConfigParser

    from ..fidelity import PerClassMetrics

    parser = ConfigParser(copy.deepcopy(raw))
    parser["network"] = network
    parser["validate#handlers"] = []
    evaluator = instantiate(parser, "validate#evaluator")
    per_class = PerClassMetrics(names, label_mode=label_mode or "auto").attach(evaluator)
    with guard.running(evaluator):
        evaluator.run()
    scalars = {k: float(v) for k, v in evaluator.state.metrics.items() if isinstance(v, (int, float))}
    return scalars, per_class.compute()


def network_latency(model: Any, x: torch.Tensor, repeats: int = 5) -> float:
    from ..measure import time_call

    with torch.no_grad():
        return time_call(lambda: model(x), repeats=repeats)["median_s"]


def inferer_latency(image: torch.Tensor, inferer: Any, models: Dict[str, nn.Module], device: torch.device,
                     repeats: int) -> Dict[str, Any]:
    """Median seconds of the bundle's whole inferer (e.g. sliding window) on one preprocessed validation ``image``,
    for each model (interleaved rounds, same input)."""
    from ..measure import paired_latency

    x = torch.as_tensor(image)[None].float().to(device)
    with torch.no_grad():
        timed = paired_latency({name: (lambda model=model: inferer(inputs=x, network=model))
                                for name, model in models.items()}, rounds=repeats)
    result: Dict[str, Any] = {name: t["median_s"] for name, t in timed.items()}
    result.update(input_shape=list(x.shape), inferer=type(inferer).__name__)
    return result


def check_recipe_schedule(src: str, info: Dict[str, Any], epochs: Optional[int], overrides: Dict[str, Any]) -> None:
    """The recipe's pruning schedule against the fine-tuning epochs (``--epochs`` or the trainer's ``max_epochs``),
    with the ``--set`` values, before anything runs (also for ``--dry-run``); the fixes it suggests pass this same
    check (:func:`~monai_prune.bundle_configs.check_schedule`)."""
    from monai.bundle import ConfigParser


    if not config_get(info["recipe"], "prune#end_epoch")[0]:
        return
    parser = ConfigParser()
    parser.read_config([info["train_path"], info["recipe_path"]])
    parser["bundle_root"] = src
    for key, value in overrides.items():
        if not key.startswith(NOT_FOR_TRAINING):
            parser[key] = value
    if epochs is not None:
        parser["train#trainer#max_epochs"] = epochs
    values = {}
    for name, key in (("start_epoch", "prune#start_epoch"), ("end_epoch", "prune#end_epoch"),
                      ("frequency", "prune#frequency"), ("max_epochs", "train#trainer#max_epochs")):
        if config_get(parser.get(), key)[0]:
            try:
                values[name] = parser.get_parsed_content(key)
            except Exception as e:
                raise ConfigError(f"cannot evaluate {key}: {e}") from e
    check_schedule(values)


def describe_run(src: str, out: str, epochs: Optional[int], int8: Optional[str],
              info: Dict[str, Any]) -> List[str]:
    steps = [f"read {src} (never modified): {os.path.relpath(info['train_path'], src)}, configs/metadata.json, "
             "models/model.pt",
             f"fine-tune a private copy with the bundle's trainer + recipe {os.path.basename(info['recipe_path'])}"
             + (f" for {epochs} epochs" if epochs else " (the bundle's max_epochs)"),
             "evaluate dense and compressed with the bundle's validate#evaluator; time the network call on "
             f"{tuple(info['shape'])} (from {info['shape_source']}) and the whole validate#inferer on one "
             "validation image",
             "write models/model.ts (+ metadata/inference under extra/), model.pt, plan.json, model.onnx"
             + (f", int8 ({int8})" if int8 else ""),
             "rewrite every config that builds the network (network_def: the dense constructor + models/plan.json)"
             + (", write configs/inference_int8.json" if int8 else "")
             + "; metadata.json (new version, measured eval_metrics and versions, compression section, sha256), "
             "docs/fidelity_card.json + .md, docs/README.md",
             f"rename the finished folder to {out}"]
    return steps
