"""What a compressed bundle says about itself: measured eval metrics and its README."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict

from ..fidelity import FidelityCard
from .checks import CONFIG_EXTS

logger = logging.getLogger(__name__)

def measured_eval_metrics(published: Any, measured: Dict[str, float]) -> Dict[str, float]:
    """The metadata's ``eval_metrics``: what the evaluator measured on the compressed model, by its metric names; a
    published name that is a measured one without the ``val_`` prefix (the model zoo's ``mean_dice`` for
    ``val_mean_dice``) keeps its name with the measured value; published values with no measured counterpart go."""
    result = {}
    for key in (published if isinstance(published, dict) else {}):
        for name in (key, f"val_{key}"):
            if name in measured:
                result[key] = measured[name]
                break
    for name, value in measured.items():
        if name not in result and not (name.startswith("val_") and name[4:] in result):
            result[name] = value
    return result


def bundle_readme(metadata: Dict[str, Any], card: FidelityCard, src: str, out: str, onnx_path: str) -> str:
    """The new bundle's ``docs/README.md``: what it is, its fidelity card (measured before -> after, guardrails), its
    files and how to run it. A degraded bundle's README starts with the card's headline."""
    c = metadata["compression"]
    int8 = c.get("int8")
    lines = [f"**{card.headline()}**", ""] if card.status in ("DEGRADED", "FAIL") else []
    lines += [
        f"# {metadata['name']}", "",
        f"Version {metadata['version']}: {metadata['changelog'][metadata['version']]}.", "",
        f"This bundle was made from `{os.path.basename(src)}` by `monai-prune compress-bundle` with the recipe "
        f"`{c['recipe']}` ({c['epochs']} fine-tuning epochs with the source bundle's own trainer and data). "
        "Only the network changed: preprocessing, inferer and postprocessing are the source bundle's.", "",
        "## Fidelity card: what was measured (before = the source's dense model, after = this bundle's model)", "",
        card.to_markdown(heading_level=3),
        "The card is also in `docs/fidelity_card.md`, `docs/fidelity_card.json` "
        "(`monai_prune.fidelity.FidelityCard.load`) and `configs/metadata.json` (`compression.fidelity_card`).", "",
    ]
    if int8:
        lines += [f"int8 ({int8['backend']}): `models/{int8['file']}`, {int8['int8_layers']} layers int8, argmax "
                  f"agreement with fp32 {int8['agreement_vs_fp32']:.4f}, {int8['speedup_vs_fp32']:.2f}x vs its fp32. "
                  + " ".join(w.rstrip(". ") + "." for w in int8["warnings"]), ""]
    configs = c.get("configs", {})
    plan = any("plan.json" in note for note in configs.values())
    lines += ["## Measured metrics", "",
              f"`eval_metrics` in `configs/metadata.json` are {metadata['eval_metrics_source']}."
              + (" The source bundle's published values (of its dense model) are kept under "
                 "`compression.source_published_eval_metrics`, not as this bundle's." if
                 c.get("source_published_eval_metrics") else ""),
              "", "## Files", "",
              "- `models/model.pt` + `models/plan.json`: state dict and pruning plan of the compressed network. Every "
              "config's `network_def` builds the source's dense network and replays the plan on it "
              "(`monai_prune.apply_plan`, the plan read as data), so the configs' own checkpoint loaders load "
              "`model.pt` as they did for the dense bundle (`torch.load(..., weights_only=True)` works too)."
              if plan else "- `models/model.pt`: state dict of the compressed network (same layout as the source's).",
              "- `models/model.ts`: TorchScript of the compressed network (metadata and inference config embedded); "
              "what MONAI Deploy loads.",
              f"- `models/{os.path.basename(onnx_path)}`: ONNX for ONNX Runtime / OpenVINO / Triton.",
              "- every model file's sha256 is in `configs/metadata.json` (`model_files`); "
              "`monai_prune.bundle.verify_model_files(bundle)` checks them; every config's is under `config_files`, "
              "which deploy apps check before parsing a config.", "",
              "## Configs", ""]
    lines += [f"- `configs/{name}`: {note}." for name, note in sorted(configs.items()) if name.endswith(CONFIG_EXTS)]
    if configs.get("large_files"):
        lines += [f"- {configs['large_files']}."]
    root = os.path.basename(out)
    lines += ["", "## Run (from the bundle folder, with monai-prune installed: the configs use `monai_prune.apply_plan`)",
              "", "```bash",
              "python -m monai.bundle run --config_file configs/inference.json --dataset_dir <your data>"]
    if "evaluate.json" in configs and "train.json" in configs:
        lines += ["python -m monai.bundle run --config_file \"['configs/train.json','configs/evaluate.json']\" "
                  "--dataset_dir <your data>"]
    if int8 and int8.get("config"):
        lines += [f"python -m monai.bundle run --config_file \"['configs/inference.json','configs/{int8['config']}']\" "
                  "--dataset_dir <your data>  # int8, " + int8["backend"]]
    lines += ["```", "", f"(or from elsewhere with `--bundle_root {root}`.)", ""]
    if "inference_trt.json" in configs:
        lines += ["## TensorRT (untested here)", "",
                  "`configs/inference_trt.json` loads `models/model_trt.ts`, which this bundle does not ship. Make it "
                  "from this bundle's own `network_def` and `model.pt` (the compressed network), then run it:", "",
                  "```bash",
                  "python -m monai.bundle trt_export --net_id network_def --filepath models/model_trt.ts "
                  "--ckpt_file models/model.pt --meta_file configs/metadata.json --config_file configs/inference.json "
                  "--precision fp16",
                  "python -m monai.bundle run --config_file \"['configs/inference.json','configs/inference_trt.json']\"",
                  "```", "",
                  "TensorRT and a GPU were not available where this bundle was made: the TensorRT route was not run.",
                  ""]
    return "\n".join(lines)
