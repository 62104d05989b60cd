"""compress-bundle's stages after the fine-tuning, each given the run's :class:`~.settings.CompressSettings`: the
new bundle's model files, the ``compression`` measurements (cost, fidelity, backend agreement), the guardrails,
the int8 model, the rewritten configs, the metadata and fidelity card, and the files that close the bundle
(``model.ts`` with the metadata embedded, sha256 of every file, ``metadata.json``, ``docs/``). They write into the
staging folder, never into ``out``."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from typing import Any, Dict, Tuple

import torch

from .._io import config_digests, sha256
from ..bundle_configs import drop_model_downloads, recorded_overrides, rewrite_configs, versions_used, write_int8_config
from ..errors import GuardrailError
from ..fidelity import FidelityCard, check_guardrails, compare_per_class, json_safe, worst_cases
from ..runtime.registry import model_files
from ..utils import atomic_write_text
from .artifacts import bundle_readme, measured_eval_metrics
from .checks import SKIPPED, config_file, load_config
from .evaluate import bump_version, inferer_latency, network_latency
from .settings import CompressSettings, TrainedModels

logger = logging.getLogger("monai_prune.bundle.compress")


def write_models(settings: CompressSettings, info: Dict[str, Any], staging: str, trained: TrainedModels,
                 x: torch.Tensor) -> Any:
    """The new bundle's files from the source (its configs, the recipe as ``configs/compress_recipe.json``, what
    else it ships) and ``models/model.pt``, ``plan.json``, ``model.onnx``; returns the ONNX export."""
    from ..export import export_onnx

    src, network = settings.src, trained.network
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
    if trained.plan is not None:
        trained.plan.save(os.path.join(models, "plan.json"))
    onnx = export_onnx(network.cpu(), x.cpu(), os.path.join(models, "model.onnx"))
    network.to(settings.device)
    return onnx


def model_cost(settings: CompressSettings, trained: TrainedModels, x: torch.Tensor) -> Dict[str, Dict[str, Any]]:
    """Params, MACs, size (as torch.save writes them) and the latency of one network call on ``x``, before ->
    after."""
    from .. import count_macs, count_params
    from ..measure import state_dict_bytes

    dense, network, repeats = trained.dense, trained.network, settings.repeats
    return {"macs": {"before": count_macs(dense, x), "after": count_macs(network, x)},
            "params": {"before": count_params(dense), "after": count_params(network)},
            "size_bytes": {"before": state_dict_bytes(dense), "after": state_dict_bytes(network)},
            "network_call": {"before": network_latency(dense, x, repeats),
                             "after": network_latency(network, x, repeats)}}


def measure_compression(settings: CompressSettings, info: Dict[str, Any], trained: TrainedModels,
                        cost: Dict[str, Dict[str, Any]], dataset: Any, inferer: Any) -> Dict[str, Any]:
    """The ``compression`` section's measurements: the :func:`model_cost`, the latency of the bundle's whole
    inferer, and fidelity (the evaluator's metrics, per class, worst cases) before -> after."""
    dense, network, device = trained.dense, trained.network, settings.device
    before, before_classes, after_classes = trained.before, trained.before_classes, trained.after_classes
    network_call = cost["network_call"]
    logger.info("timing the bundle's validate#inferer with both models on %s", device.type)
    latency = inferer_latency(dataset[0]["image"], inferer, {"before": dense, "after": network}, device,
                              settings.repeats)
    return {
        "tool": "monai-prune", "recipe": info["recipe"].get("recipe", {}).get("name",
                                                                           os.path.basename(info["recipe_path"])),
        "recipe_overrides": recorded_overrides(settings.overrides), "epochs": trained.epochs,
        "plan_checksum": trained.plan.checksum if trained.plan is not None else None,
        "params": cost["params"], "macs": cost["macs"], "size_bytes": cost["size_bytes"],
        "latency_s": {**latency, "device": device.type, "ratio": latency["before"] / latency["after"],
                      "what": "the bundle's validate#inferer on the first validation case (median)"},
        "network_latency_s": {**network_call, "device": device.type, "input_shape": info["shape"],
                              "ratio": network_call["before"] / network_call["after"]},
        "metrics": {k: {"before": before[k], "after": trained.after.get(k)} for k in before},
        "per_class": json_safe(compare_per_class(before_classes, after_classes)),
        "validation_cases": before_classes["cases"],
        "units": before_classes.get("units", {}),
        "label_mode": before_classes.get("label_mode"),
        "worst_cases": json_safe(worst_cases(before_classes, after_classes)),
        **({"ece": {"before": before_classes["ece"], "after": after_classes["ece"]}} if "ece" in before_classes
           else {}),
        "calibration_sha256": None,
    }


def check_agreement(settings: CompressSettings, compression: Dict[str, Any], trained: TrainedModels, dataset: Any,
                    inferer: Any, onnx_path: str) -> None:
    """``backend_agreement`` (the ONNX export against torch) and ``agreement_vs_dense`` on two validation cases."""
    from ..fidelity import backend_agreement, prediction_agreement

    network, dense = trained.network, trained.dense
    inputs = [torch.as_tensor(dataset[i]["image"])[None].float() for i in range(min(2, len(dataset)))]
    compression["backend_agreement"] = backend_agreement(network.cpu().eval(), inputs, inferer, onnx_path=onnx_path,
                                                         label_mode=compression["label_mode"])
    compression["agreement_vs_dense"] = prediction_agreement(dense.cpu().eval(), network, inputs, inferer,
                                                             label_mode=compression["label_mode"])
    network.to(settings.device)
    dense.to(settings.device)


def hold_guardrails(settings: CompressSettings, info: Dict[str, Any], compression: Dict[str, Any]) -> None:
    """Record the recipe's guardrails held or broken; a broken one stops the run unless ``allow_degraded``."""
    broken = check_guardrails(info["guardrails"], compression) if info["guardrails"] else []
    compression["guardrails"] = {"declared": info["guardrails"], "broken": broken,
                                 "allowed_degraded": bool(broken and settings.allow_degraded)}
    if broken and not settings.allow_degraded:
        raise GuardrailError("the compressed model breaks its guardrails, nothing was written (--allow-degraded "
                             "writes it anyway, marked DEGRADED): " + "; ".join(broken))
    if broken:
        logger.warning("DEGRADED (written because of --allow-degraded): %s", "; ".join(broken))


def quantize_int8(settings: CompressSettings, info: Dict[str, Any], staging: str, network: torch.nn.Module,
                  dataset: Any, compression: Dict[str, Any]) -> None:
    """The int8 model in ``models/``, calibrated on validation data; recorded under ``compression["int8"]``."""
    from ..quantization import calibration_data, quantize

    models = os.path.join(staging, "models")
    calibration = calibration_data(dataset, settings.calibration_samples, roi_size=info["shape"][2:])
    result = quantize(network.cpu(), calibration, backend=settings.int8, out_dir=os.path.join(staging, ".int8"),
                      repeats=settings.repeats)
    for path in model_files(result.path):  # an OpenVINO .xml moves with its .bin
        shutil.move(path, os.path.join(models, os.path.basename(path)))
    shutil.rmtree(os.path.join(staging, ".int8"))
    compression["calibration_sha256"] = calibration.sha256
    compression["int8"] = {"file": os.path.basename(result.path), "backend": result.backend,
                           "int8_layers": len(result.int8_layers), "fp32_layers": result.fp32_layers,
                           "agreement_vs_fp32": result.fidelity["agreement"],
                           "speedup_vs_fp32": result.speedup, "warnings": result.warnings}
    network.to(settings.device)


def rewrite_bundle_configs(settings: CompressSettings, staging: str, trained: TrainedModels,
                           compression: Dict[str, Any]) -> Dict[str, Any]:
    """Every config of the new bundle made to build the compressed network (and, with int8, the int8 overlay);
    returns what was changed, by file (the ``compression["configs"]`` section)."""
    configs_done = rewrite_configs(staging, trained.dense_def if trained.plan is not None else None,
                                   settings.overrides)
    downloads = drop_model_downloads(staging)
    if downloads:
        configs_done["large_files"] = downloads
    if settings.int8:
        compression["int8"]["config"] = write_int8_config(staging)
        if compression["int8"]["config"]:
            configs_done[compression["int8"]["config"]] = (
                f"overlay of inference.json that runs models/{compression['int8']['file']} "
                f"({compression['int8']['backend']} int8, checked against its sha256)")
    return configs_done


def bundle_metadata(settings: CompressSettings, info: Dict[str, Any], trained: TrainedModels,
                    compression: Dict[str, Any]) -> Tuple[Dict[str, Any], FidelityCard]:
    """The new ``metadata.json`` (version, changelog, measured eval_metrics, versions, ``compression``; not yet the
    sha256 of the files) and the fidelity card."""
    macs, params = compression["macs"], compression["params"]
    metadata = copy.deepcopy(info["metadata"])
    version = bump_version(metadata.get("version", "0.1.0"))
    metadata["version"] = version
    metadata.update(versions_used(info["metadata"], compression.get("int8", {}).get("backend")))
    published = metadata.get("eval_metrics")
    metadata["eval_metrics"] = measured_eval_metrics(published, trained.after)
    metadata["eval_metrics_source"] = (
        f"measured by monai-prune compress-bundle on the source bundle's validation split "
        f"({compression['validation_cases']} cases, train.json validate#dataset) with its validate#evaluator, "
        "after fine-tuning; the dense source model on the same cases: compression.metrics (before)")
    if published:
        compression["source_published_eval_metrics"] = {
            "values": published, "note": "published by the source bundle for its dense model; not measured here"}
    summary_line = (f"compressed with monai-prune recipe {compression['recipe']}: MACs x{macs['after'] / macs['before']:.3f}, "
                    f"params x{params['after'] / params['before']:.3f}, latency {compression['latency_s']['ratio']:.2f}x "
                    f"faster on {settings.device.type}")
    if compression["guardrails"]["broken"]:
        summary_line = "DEGRADED (breaks its guardrails): " + summary_line
    metadata["changelog"] = {version: summary_line, **metadata.get("changelog", {})}
    name = str(metadata.get("name", os.path.basename(settings.src)))
    metadata["name"] = name if "compressed" in name.lower() else f"{name} (compressed)"
    card = FidelityCard.from_compression(compression, title=f"{metadata['name']} {version}")
    compression["fidelity_card"] = card.to_dict()
    metadata["compression"] = compression
    return metadata, card


def write_metadata_and_docs(settings: CompressSettings, staging: str, network: torch.nn.Module, x: torch.Tensor,
                            metadata: Dict[str, Any], card: FidelityCard, onnx_path: str) -> None:
    """``models/model.ts`` with the metadata and inference config embedded, the sha256 of every model and config
    file, ``configs/metadata.json``, and ``docs/`` (fidelity card .json/.md, README; the source's as README_dense)."""
    from ..export import export_torchscript

    models = os.path.join(staging, "models")
    inference_path = config_file(staging, "inference")
    inference = load_config(inference_path) if inference_path else None
    export_torchscript(network.cpu(), x.cpu(), os.path.join(models, "model.ts"),
                       extra_files={"metadata.json": metadata, **({"inference.json": inference} if inference else {})})
    metadata["model_files"] = {name: sha256(os.path.join(models, name)) for name in sorted(os.listdir(models))}
    metadata["config_files"] = config_digests(staging)  # every config is final now; deploy checks them before parsing
    atomic_write_text(os.path.join(staging, "configs", "metadata.json"), json.dumps(metadata, indent=2))
    docs = os.path.join(staging, "docs")
    os.makedirs(docs, exist_ok=True)
    if os.path.isfile(os.path.join(docs, "README.md")):
        os.replace(os.path.join(docs, "README.md"), os.path.join(docs, "README_dense.md"))
    card.to_json(os.path.join(docs, "fidelity_card.json"))
    atomic_write_text(os.path.join(docs, "fidelity_card.md"), card.to_markdown())
    atomic_write_text(os.path.join(docs, "README.md"), bundle_readme(metadata, card, settings.src, settings.out,
                                                                     onnx_path))
    logger.info("fidelity card: %s", card.headline())
