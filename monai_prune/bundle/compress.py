"""``compress_bundle``: the whole run, from the checks to the published bundle."""

from __future__ import annotations

import copy
import logging
import os
import shutil
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..bundle_configs import instantiate
from ..errors import ConfigError
from ..fidelity import class_names
from ..weights import read_state_dict
from .checks import NOT_FOR_TRAINING, check_bundle, config_get
from .evaluate import check_recipe_schedule, dense_network, describe_run, evaluate_network, validation_label_mode
from .publish import (bundle_metadata, check_agreement, hold_guardrails, measure_compression, model_cost,
                      quantize_int8, rewrite_bundle_configs, write_metadata_and_docs, write_models)
from .settings import CompressSettings, TrainedModels
from .workspace import SigtermGuard, Terminated, make_work, private_run_root, remove_stale_work, sigterm_unwinds

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------- main
def compress_bundle(src: str, recipe: str, out: str, epochs: Optional[int] = None,
                    overrides: Optional[Dict[str, Any]] = None, int8: Optional[str] = None,
                    calibration_samples: int = 8, target_device: str = "cpu", dry_run: bool = False,
                    repeats: int = 5, input_shape: Optional[List[int]] = None,
                    allow_degraded: bool = False) -> Dict[str, Any]:
    """Compress bundle ``src`` with ``recipe`` into a new bundle at ``out``; returns the compression summary (the
    metadata's ``compression`` section) with the :class:`~monai_prune.fidelity.FidelityCard` under ``"card"``.

    Args:
        src: the source bundle folder (read only).
        recipe: a packaged recipe name (``monai-prune recipes``) or a recipe file.
        out: the new bundle folder; must not exist, nor be or lie inside ``src`` (or contain it). The work happens in
            ``.<out>.<pid>.XXXX`` beside it, removed on success, error and SIGTERM (then the process exits with
            143); such folders left by killed runs are removed by the next run.
        epochs: fine-tuning epochs (``train#trainer#max_epochs``); default: the bundle's own.
        overrides: recipe parameters by id, e.g. ``{"prune#final_sparsity": 0.7}`` (``train#...`` ids too).
        int8: also quantize the compressed model (``"openvino"``, ``"onnxruntime"`` or ``"auto"``), calibrated on
            ``calibration_samples`` inputs of the bundle's validation data.
        target_device: where latency is measured (``"cpu"``; ``"cuda"`` when available).
        dry_run: only return (and log) what would be done.
        input_shape: the example input ``(1, C, *spatial)`` for MACs, exports and the network-call latency
            (default: ``network_data_format`` inputs.image in the metadata); also ``prune#input_shape``.
        allow_degraded: write the bundle even when it breaks the recipe's ``guardrails`` (per-class floors and
            budgets, :func:`monai_prune.fidelity.check_guardrails`; ``guardrails#<name>`` overrides); its README
            and fidelity card then say DEGRADED in their first line. Without it such a bundle raises
            :class:`GuardrailError`.
    """
    settings = CompressSettings(os.path.abspath(src), recipe, os.path.abspath(out), epochs=epochs,
                                overrides=dict(overrides or {}), int8=int8, calibration_samples=calibration_samples,
                                target_device=target_device, dry_run=dry_run, repeats=repeats,
                                input_shape=input_shape, allow_degraded=allow_degraded)
    info = _checked_bundle(settings)
    steps = describe_run(settings.src, settings.out, settings.epochs, settings.int8, info)
    if settings.dry_run:
        return {"dry_run": True, "steps": steps}
    out = settings.out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    remove_stale_work(out)
    with sigterm_unwinds(out) as guard:
        work = make_work(out)
        try:
            staging = os.path.join(work, "bundle")
            summary = _compress(settings, info, staging, os.path.join(work, "run"), guard)
            if guard.received:  # a SIGTERM that some code caught and swallowed: never publish its result
                raise Terminated()
            os.replace(staging, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    logger.info("compressed bundle written to %s", out)
    return summary


def _checked_bundle(settings: CompressSettings) -> Dict[str, Any]:
    """The source bundle's facts (:func:`check_bundle`), its example input (``input_shape`` when given), and its
    recipe's pruning schedule checked against the epochs: everything refused before a run (and for a dry run)."""
    info = check_bundle(settings.src, settings.recipe, settings.out, settings.overrides)
    input_shape = settings.input_shape
    if input_shape is not None:
        if len(input_shape) != len(info["shape"]) or input_shape[1] != info["shape"][1] or min(input_shape) < 1:
            raise ConfigError(f"input_shape {list(input_shape)} does not fit the bundle's input {info['shape']} "
                              "(same rank and channels)")
        info["shape"] = [int(v) for v in input_shape]
        info["shape_source"] = "--input-shape"
    check_recipe_schedule(settings.src, info, settings.epochs, settings.overrides)
    return info


def _write_network_def(train_path: str, network_def: Dict[str, Any]) -> None:
    """Put the ``--set network_def`` override into the private run's train config, where the recipes read the
    constructor config the pruning plan records (``prune#network_def`` loads the file: parsing it in the run's
    config would build a network instead). Never the source's file."""
    from monai.bundle import ConfigParser

    config = ConfigParser.load_config_file(train_path)
    config["network_def"] = network_def
    ConfigParser.export_config_file(config, train_path, fmt="yaml" if train_path.endswith((".yaml", ".yml"))
                                    else "json", indent=4)


# ---------------------------------------------------------------------------------------------------- the run
def _compress(settings: CompressSettings, info: Dict[str, Any], staging: str, run_root: str,
              guard: SigtermGuard) -> Dict[str, Any]:
    """The run, stage by stage, in the private ``run_root``; the new bundle is written to ``staging``."""
    parser, as_written, dense_state = _run_config(settings, info, run_root)
    x = torch.zeros(info["shape"], device=settings.device)
    raw = copy.deepcopy(parser.get())
    if config_get(raw, "initialize")[0]:
        parser.get_parsed_content("initialize")  # e.g. set_determinism, as monai.bundle run does
    trained = _fine_tune(settings, info, parser, raw, as_written, dense_state, guard)
    onnx = write_models(settings, info, staging, trained, x)
    cost = model_cost(settings, trained, x)
    # the trainer's validation dataset and inferer (already built, cached): latency, backend agreement, calibration
    dataset = parser.get_parsed_content("validate#dataset")
    inferer = parser.get_parsed_content("validate#inferer")
    compression = measure_compression(settings, info, trained, cost, dataset, inferer)
    check_agreement(settings, compression, trained, dataset, inferer, onnx.path)
    hold_guardrails(settings, info, compression)
    if settings.int8:
        quantize_int8(settings, info, staging, trained.network, dataset, compression)
    compression["configs"] = rewrite_bundle_configs(settings, staging, trained, compression)
    metadata, card = bundle_metadata(settings, info, trained, compression)
    write_metadata_and_docs(settings, staging, trained.network, x, metadata, card, onnx.path)
    return {**compression, "card": card}


def _run_config(settings: CompressSettings, info: Dict[str, Any], run_root: str) -> Tuple[Any, Dict[str, Any], dict]:
    """``(parser, as_written, dense_state)``: the private run's parser (train config + recipe + metadata, with the
    ``--set`` values and epochs, loading the dense weights first), its config before that loader was inserted (ids
    in errors are the user's), and the dense state dict."""
    from monai.bundle import ConfigParser

    src, overrides = settings.src, settings.overrides
    private_run_root(src, run_root, info["weights"])
    parser = ConfigParser()
    run_train = info["train_path"].replace(src, run_root, 1)
    parser.read_config([run_train, info["recipe_path"]])
    parser.read_meta(os.path.join(run_root, "configs", "metadata.json"))
    parser["bundle_root"] = run_root
    if config_get(info["recipe"], "prune#input_shape")[0] and "prune#input_shape" not in overrides:
        parser["prune#input_shape"] = info["shape"]  # the bundle's own input, not the recipe's 3D placeholder
    for key, value in overrides.items():
        if not key.startswith(NOT_FOR_TRAINING):
            parser[key] = value
    if settings.epochs is not None:
        parser["train#trainer#max_epochs"] = settings.epochs
    if any(k == "network_def" or k.startswith("network_def#") for k in overrides):
        _write_network_def(run_train, copy.deepcopy(parser.get("network_def")))
    dense_state = read_state_dict(info["weights"])
    as_written = copy.deepcopy(parser.get())  # ids in errors are the user's, not shifted by the loader we insert
    # the dense weights load first (before distillation takes its teacher at STARTED)
    parser["train#handlers"] = [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                                 "load_dict": {"model": "@network"}, "map_location": "cpu"}] + list(parser["train#handlers"])
    return parser, as_written, dense_state


def _fine_tune(settings: CompressSettings, info: Dict[str, Any], parser: Any, raw: Dict[str, Any],
               as_written: Dict[str, Any], dense_state: dict, guard: SigtermGuard) -> TrainedModels:
    """Evaluate the dense model, fine-tune with the bundle's trainer and the recipe's handlers, evaluate the result
    (the evaluator's best checkpoint when it saved one); refuse a recipe whose pruning handler never ran."""
    from ..pruning import PruningPlan

    dense_def, dense = dense_network(parser)
    dense = dense.to(settings.device)
    dense.load_state_dict(dense_state)
    dense.eval()
    pred_format = info["metadata"]["network_data_format"]["outputs"]["pred"]
    names = class_names(pred_format.get("channel_def"), int(pred_format.get("num_channels", 1)))
    label_mode = validation_label_mode(info["metadata"], raw)
    logger.info("evaluating the dense model with the bundle's validate#evaluator")
    before, before_classes = evaluate_network(raw, dense, names, guard, label_mode)

    trainer = instantiate(parser, "train#trainer", as_written)
    logger.info("fine-tuning with %s for %d epochs", os.path.basename(info["recipe_path"]), trainer.state.max_epochs)
    with guard.running(trainer, parser.get_parsed_content("validate#evaluator")):
        trainer.run()
    network = parser.get_parsed_content("network")
    ckpt_dir = parser.get_parsed_content("ckpt_dir")
    best = os.path.join(ckpt_dir, "model.pt")
    if os.path.isfile(best):
        network.load_state_dict(read_state_dict(best))  # the evaluator's best checkpoint (of the final architecture)
    network.eval()
    after, after_classes = evaluate_network(raw, network, names, guard, label_mode)
    plan_file = os.path.join(ckpt_dir, "plan.json")
    plan = PruningPlan.load(plan_file) if os.path.isfile(plan_file) else None
    if plan is None and config_get(info["recipe"], "prune#plan_path")[0]:
        raise ConfigError("the recipe's pruning handler never ran, so nothing was pruned: a --set train#handlers=... "
                          "replaces the handlers the recipe appends (+train#handlers); change single handlers "
                          "(train#handlers#<i>#...) instead (nothing was written)")
    return TrainedModels(dense_def, dense, network, plan, trainer.state.max_epochs, before, before_classes, after,
                    after_classes)
