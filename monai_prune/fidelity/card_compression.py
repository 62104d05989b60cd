"""A fidelity card's fields from the ``compression`` section ``compress-bundle`` writes to ``configs/metadata.json``
(:meth:`FidelityCard.from_compression <monai_prune.fidelity.card.FidelityCard.from_compression>`)."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from ..errors import InputError
from .agreement import agreement_note
from .card_markdown import fmt4


def card_fields(compression: Mapping[str, Any], title: Optional[str] = None) -> Dict[str, Any]:
    """The keyword arguments of a :class:`~monai_prune.fidelity.card.FidelityCard` from a compression section
    (also from bundles written before cards existed; a whole ``metadata.json`` is accepted too)."""
    if not isinstance(compression, Mapping):
        raise InputError("compression must be the metadata's compression section, got "
                         f"{type(compression).__name__}")
    if "per_class" not in compression and isinstance(compression.get("compression"), Mapping):
        compression = compression["compression"]  # a whole metadata.json
    if "per_class" not in compression:
        raise InputError("no per_class measurements in this compression section (keys "
                         f"{sorted(compression)}): it was not written by monai-prune compress-bundle")
    per_class = compression["per_class"]
    task = compression.get("task") or ("segmentation" if any("dice" in m for m in per_class.values())
                                        else "classification")
    summary = {k: {"before": v.get("before"), "after": v.get("after")}
               for k, v in (compression.get("metrics") or {}).items()}
    if compression.get("ece"):
        summary["ece"] = {"before": compression["ece"].get("before"), "after": compression["ece"].get("after")}
    guard = compression.get("guardrails") or {}
    recipe = compression.get("recipe")
    label_mode = compression.get("label_mode") or (compression.get("agreement_vs_dense") or {}).get("label_mode")
    return dict(title=title or f"monai-prune compression ({recipe or 'unknown recipe'})", task=task,
                per_class=per_class, summary=summary, units=dict(compression.get("units") or {}),
                latency_s=_timed(compression.get("latency_s"), "the bundle's inferer"),
                network_latency_s=_timed(compression.get("network_latency_s"), "one network call"),
                macs=_before_after(compression.get("macs")), params=_before_after(compression.get("params")),
                size_bytes=_before_after(compression.get("size_bytes")),
                backend_agreement=compression.get("backend_agreement") or None,
                worst_cases=list(compression.get("worst_cases") or []), guardrails=dict(guard.get("declared") or {}),
                broken=list(guard.get("broken") or []), allowed_degraded=bool(guard.get("allowed_degraded")),
                cases=compression.get("validation_cases"), notes=_notes(compression, recipe, label_mode),
                label_mode=label_mode if task == "segmentation" else None)


def _notes(compression: Mapping[str, Any], recipe: Optional[str], label_mode: Optional[str]) -> list:
    """Where the numbers come from, and the caveats, as sentences."""
    notes = []
    if recipe:
        notes.append(f"made by monai-prune compress-bundle with the recipe {recipe!r}"
                     + (f", {compression['epochs']} fine-tuning epochs" if compression.get("epochs") else "")
                     + (f", plan checksum {compression['plan_checksum']}" if compression.get("plan_checksum")
                        else "") + ".")
    how = ("multi-label segmentation: every output channel is its own class, Dice per channel on its binary "
           "mask (channels may overlap), averaged over cases" if label_mode == "multi_label"
           else "segmentation: Dice per class averaged over cases")
    notes.append("before = the source bundle's dense model, after = the compressed model; both measured by the "
                 "source bundle's own validation evaluator (its data, inferer and postprocessing), per-class "
                 f"values by monai-prune from the same outputs ({how}; "
                 "classification: sensitivity and one-vs-rest AUC per class; n/a where undefined, e.g. a class "
                 "absent from the data). Check them on your own held-out data before clinical use.")
    if compression.get("agreement_vs_dense"):
        notes.append(agreement_note(compression["agreement_vs_dense"], "validation input(s) through the bundle's "
                                                                       "inferer"))
    for backend, v in (compression.get("backend_agreement") or {}).items():
        if "error" in v:
            notes.append(f"{backend} cannot run this model and was skipped ({v['error'][:160]}): serve it on "
                         "another runtime.")
    int8 = compression.get("int8")
    if int8:
        notes.append(f"int8 artifact models/{int8.get('file')} ({int8.get('backend')}): argmax agreement with the "
                     f"compressed fp32 model {fmt4(int8.get('agreement_vs_fp32'))}; the per-class values above "
                     "are of the fp32 model.")
    return notes


def _before_after(v: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    return None if not v else {"before": v.get("before"), "after": v.get("after")}


def _timed(v: Optional[Mapping[str, Any]], default: str) -> Optional[Dict[str, Any]]:
    """``{"before", "after", "what"}`` from a compression section's timing (``what`` + inferer, device, input)."""
    if not v:
        return None
    what = str(v.get("what") or default)
    details = [str(v[k]) for k in ("inferer", "device") if v.get(k)]
    if v.get("input_shape"):
        details.append(f"input {tuple(v['input_shape'])}")
    if details:
        what = f"{what[:-1]}; {', '.join(details)})" if what.endswith(")") else f"{what} ({', '.join(details)})"
    return {"before": v.get("before"), "after": v.get("after"), "what": what}
