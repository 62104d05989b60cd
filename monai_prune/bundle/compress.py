"""``compress_bundle``: the whole run, from the checks to the published bundle."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from typing import Any, Dict, List, Optional

import torch

from .._io import config_digests, sha256
from ..bundle_configs import (drop_model_downloads, instantiate, recorded_overrides, rewrite_configs, versions_used,
                              write_int8_config)
from ..errors import ConfigError, GuardrailError
from ..runtime.registry import model_files
from ..fidelity import FidelityCard, check_guardrails, class_names, compare_per_class, json_safe, worst_cases
from ..utils import atomic_write_text
from ..weights import read_state_dict
from .artifacts import bundle_readme, measured_eval_metrics
from .checks import INT8_BACKENDS, NOT_FOR_TRAINING, SKIPPED, check_bundle, config_file, config_get, load_config
from .evaluate import (bump_version, check_recipe_schedule, dense_network, describe_run, evaluate_network,
                       inferer_latency, network_latency, validation_label_mode)
from .workspace import Terminated, make_work, private_run_root, remove_stale_work, sigterm_unwinds

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
    src, out = os.path.abspath(src), os.path.abspath(out)
    overrides = dict(overrides or {})
    if int8 is not None and int8 not in INT8_BACKENDS:
        raise ConfigError(f"int8 must be one of {INT8_BACKENDS}, got {int8!r}")
    if target_device not in ("cpu", "cuda") or (target_device == "cuda" and not torch.cuda.is_available()):
        raise ConfigError(f"target device {target_device!r} is not available here (cpu{', cuda' if torch.cuda.is_available() else ''})")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    info = check_bundle(src, recipe, out, overrides)
    info["allow_degraded"] = allow_degraded
    if input_shape is not None:
        if len(input_shape) != len(info["shape"]) or input_shape[1] != info["shape"][1] or min(input_shape) < 1:
            raise ConfigError(f"input_shape {list(input_shape)} does not fit the bundle's input {info['shape']} "
                              "(same rank and channels)")
        info["shape"] = [int(v) for v in input_shape]
        info["shape_source"] = "--input-shape"
    check_recipe_schedule(src, info, epochs, overrides)
    steps = describe_run(src, out, epochs, int8, info)
    if dry_run:
        return {"dry_run": True, "steps": steps}
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    remove_stale_work(out)
    with sigterm_unwinds(out) as guard:
        work = make_work(out)
        try:
            staging = os.path.join(work, "bundle")
            summary = _compress(src, out, staging, os.path.join(work, "run"), info, epochs, overrides, int8,
                                calibration_samples, torch.device(target_device), repeats, guard)
            if guard.received:  # a SIGTERM that some code caught and swallowed: never publish its result
                raise Terminated()
            os.replace(staging, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    logger.info("compressed bundle written to %s", out)
    return summary


def _write_network_def(train_path: str, network_def: Dict[str, Any]) -> None:
    """Put the ``--set network_def`` override into the private run's train config, where the recipes read the
    constructor config the pruning plan records (``prune#network_def`` loads the file: parsing it in the run's
    config would build a network instead). Never the source's file."""
    from monai.bundle import ConfigParser

    config = ConfigParser.load_config_file(train_path)
    config["network_def"] = network_def
    ConfigParser.export_config_file(config, train_path, fmt="yaml" if train_path.endswith((".yaml", ".yml"))
                                    else "json", indent=4)


def _compress(src, out, staging, run_root, info, epochs, overrides, int8, calibration_samples, device, repeats,
              guard):
    from monai.bundle import ConfigParser

    from .. import count_macs, count_params
    from ..export import export_onnx, export_torchscript
    from ..measure import state_dict_bytes
    from ..pruning import PruningPlan

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
    if epochs is not None:
        parser["train#trainer#max_epochs"] = epochs
    if any(k == "network_def" or k.startswith("network_def#") for k in overrides):
        _write_network_def(run_train, copy.deepcopy(parser.get("network_def")))
    dense_state = read_state_dict(info["weights"])
    as_written = copy.deepcopy(parser.get())  # ids in errors are the user's, not shifted by the loader we insert
    # the dense weights load first (before distillation takes its teacher at STARTED)
    parser["train#handlers"] = [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                                 "load_dict": {"model": "@network"}, "map_location": "cpu"}] + list(parser["train#handlers"])
    x = torch.zeros(info["shape"], device=device)
    raw = copy.deepcopy(parser.get())
    if config_get(raw, "initialize")[0]:
        parser.get_parsed_content("initialize")  # e.g. set_determinism, as monai.bundle run does

    dense_def, dense = dense_network(parser)
    dense = dense.to(device)
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

    # artifacts
    models = os.path.join(staging, "models")
    os.makedirs(models)
    shutil.copytree(os.path.join(src, "configs"), os.path.join(staging, "configs"))
    for entry in os.listdir(src):
        if entry not in SKIPPED and entry != "configs":
            target = os.path.join(staging, entry)
            (shutil.copytree if os.path.isdir(os.path.join(src, entry)) else shutil.copy2)(
                os.path.join(src, entry), target)
    shutil.copy2(info["recipe_path"], os.path.join(staging, "configs", "compress_recipe.json"))
    torch.save(network.state_dict(), os.path.join(models, "model.pt"))
    if plan is not None:
        plan.save(os.path.join(models, "plan.json"))
    onnx = export_onnx(network.cpu(), x.cpu(), os.path.join(models, "model.onnx"))
    network.to(device)

    macs = {"before": count_macs(dense, x), "after": count_macs(network, x)}
    params = {"before": count_params(dense), "after": count_params(network)}
    size = {"before": state_dict_bytes(dense), "after": state_dict_bytes(network)}  # both as torch.save writes them
    network_call = {"before": network_latency(dense, x, repeats), "after": network_latency(network, x, repeats)}
    # the trainer's validation dataset and inferer (already built, cached): latency, backend agreement, calibration
    dataset = parser.get_parsed_content("validate#dataset")
    inferer = parser.get_parsed_content("validate#inferer")
    logger.info("timing the bundle's validate#inferer with both models on %s", device.type)
    latency = inferer_latency(dataset[0]["image"], inferer, {"before": dense, "after": network}, device, repeats)
    compression: Dict[str, Any] = {
        "tool": "monai-prune", "recipe": info["recipe"].get("recipe", {}).get("name",
                                                                           os.path.basename(info["recipe_path"])),
        "recipe_overrides": recorded_overrides(overrides), "epochs": trainer.state.max_epochs,
        "plan_checksum": plan.checksum if plan is not None else None,
        "params": params, "macs": macs, "size_bytes": size,
        "latency_s": {**latency, "device": device.type, "ratio": latency["before"] / latency["after"],
                      "what": "the bundle's validate#inferer on the first validation case (median)"},
        "network_latency_s": {**network_call, "device": device.type, "input_shape": info["shape"],
                              "ratio": network_call["before"] / network_call["after"]},
        "metrics": {k: {"before": before[k], "after": after.get(k)} for k in before},
        "per_class": json_safe(compare_per_class(before_classes, after_classes)),
        "validation_cases": before_classes["cases"],
        "units": before_classes.get("units", {}),
        "label_mode": before_classes.get("label_mode"),
        "worst_cases": json_safe(worst_cases(before_classes, after_classes)),
        **({"ece": {"before": before_classes["ece"], "after": after_classes["ece"]}} if "ece" in before_classes
           else {}),
        "calibration_sha256": None,
    }
    from ..fidelity import backend_agreement, prediction_agreement

    inputs = [torch.as_tensor(dataset[i]["image"])[None].float() for i in range(min(2, len(dataset)))]
    compression["backend_agreement"] = backend_agreement(network.cpu().eval(), inputs, inferer, onnx_path=onnx.path,
                                                         label_mode=compression["label_mode"])
    compression["agreement_vs_dense"] = prediction_agreement(dense.cpu().eval(), network, inputs, inferer,
                                                             label_mode=compression["label_mode"])
    network.to(device)
    dense.to(device)
    broken = check_guardrails(info["guardrails"], compression) if info["guardrails"] else []
    compression["guardrails"] = {"declared": info["guardrails"], "broken": broken,
                                 "allowed_degraded": bool(broken and info["allow_degraded"])}
    if broken and not info["allow_degraded"]:
        raise GuardrailError("the compressed model breaks its guardrails, nothing was written (--allow-degraded "
                             "writes it anyway, marked DEGRADED): " + "; ".join(broken))
    if broken:
        logger.warning("DEGRADED (written because of --allow-degraded): %s", "; ".join(broken))
    if int8:
        from ..quantization import calibration_data, quantize

        calibration = calibration_data(dataset, calibration_samples, roi_size=info["shape"][2:])
        result = quantize(network.cpu(), calibration, backend=int8, out_dir=os.path.join(staging, ".int8"),
                          repeats=repeats)
        for path in model_files(result.path):  # an OpenVINO .xml moves with its .bin
            shutil.move(path, os.path.join(models, os.path.basename(path)))
        shutil.rmtree(os.path.join(staging, ".int8"))
        compression["calibration_sha256"] = calibration.sha256
        compression["int8"] = {"file": os.path.basename(result.path), "backend": result.backend,
                               "int8_layers": len(result.int8_layers), "fp32_layers": result.fp32_layers,
                               "agreement_vs_fp32": result.fidelity["agreement"],
                               "speedup_vs_fp32": result.speedup, "warnings": result.warnings}
        network.to(device)

    # configs, metadata, TorchScript with them embedded

    configs_done = rewrite_configs(staging, dense_def if plan is not None else None, overrides)
    downloads = drop_model_downloads(staging)
    if downloads:
        configs_done["large_files"] = downloads
    if int8:
        compression["int8"]["config"] = write_int8_config(staging)
        if compression["int8"]["config"]:
            configs_done[compression["int8"]["config"]] = (
                f"overlay of inference.json that runs models/{compression['int8']['file']} "
                f"({compression['int8']['backend']} int8, checked against its sha256)")
    compression["configs"] = configs_done
    metadata = copy.deepcopy(info["metadata"])
    version = bump_version(metadata.get("version", "0.1.0"))
    metadata["version"] = version
    metadata.update(versions_used(info["metadata"], compression.get("int8", {}).get("backend")))
    published = metadata.get("eval_metrics")
    metadata["eval_metrics"] = measured_eval_metrics(published, after)
    metadata["eval_metrics_source"] = (
        f"measured by monai-prune compress-bundle on the source bundle's validation split "
        f"({compression['validation_cases']} cases, train.json validate#dataset) with its validate#evaluator, "
        "after fine-tuning; the dense source model on the same cases: compression.metrics (before)")
    if published:
        compression["source_published_eval_metrics"] = {
            "values": published, "note": "published by the source bundle for its dense model; not measured here"}
    summary_line = (f"compressed with monai-prune recipe {compression['recipe']}: MACs x{macs['after'] / macs['before']:.3f}, "
                    f"params x{params['after'] / params['before']:.3f}, latency {compression['latency_s']['ratio']:.2f}x "
                    f"faster on {device.type}")
    if compression["guardrails"]["broken"]:
        summary_line = "DEGRADED (breaks its guardrails): " + summary_line
    metadata["changelog"] = {version: summary_line, **metadata.get("changelog", {})}
    name = str(metadata.get("name", os.path.basename(src)))
    metadata["name"] = name if "compressed" in name.lower() else f"{name} (compressed)"
    card = FidelityCard.from_compression(compression, title=f"{metadata['name']} {version}")
    compression["fidelity_card"] = card.to_dict()
    metadata["compression"] = compression
    inference_path = config_file(staging, "inference")
    inference = load_config(inference_path) if inference_path else None
    export_torchscript(network.cpu(), x.cpu(), os.path.join(models, "model.ts"),
                       extra_files={"metadata.json": metadata, **({"inference.json": inference} if inference else {})})
    metadata["model_files"] = {name: sha256(os.path.join(models, name)) for name in sorted(os.listdir(models))}
    metadata["config_files"] = config_digests(staging)  # every config is final now; deploy checks them before parsing
    atomic_write_text(os.path.join(staging, "configs", "metadata.json"), json.dumps(metadata, indent=2))
    os.makedirs(os.path.join(staging, "docs"), exist_ok=True)
    if os.path.isfile(os.path.join(staging, "docs", "README.md")):
        os.replace(os.path.join(staging, "docs", "README.md"), os.path.join(staging, "docs", "README_dense.md"))
    card.to_json(os.path.join(staging, "docs", "fidelity_card.json"))
    atomic_write_text(os.path.join(staging, "docs", "fidelity_card.md"), card.to_markdown())
    atomic_write_text(os.path.join(staging, "docs", "README.md"), bundle_readme(metadata, card, src, out, onnx.path))
    logger.info("fidelity card: %s", card.headline())
    return {**compression, "card": card}
