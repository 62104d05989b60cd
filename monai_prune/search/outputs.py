"""The search's outputs: the chosen model exported to ``OUT/chosen/`` with its fidelity card, ``search.json``,
``candidates.md``, ``pareto.png`` and ``examples.npz``; and the :class:`SearchResult` the caller gets."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..fidelity import FidelityCard, agreement_note, json_safe
from ..runtime.registry import model_files
from ..utils import atomic_path, atomic_write_text
from .build import CandidateBuilder
from .candidates import DenseReference
from .config import SearchError
from .context import SearchContext
from .decide import Decision, Verdict
from .knobs import settings_text
from .report import candidates_table, knobs_table, plot_pareto

logger = logging.getLogger(__package__)  # "monai_prune.search": the name the command line prints


@dataclass
class SearchResult:
    """What :func:`~monai_prune.search.search` found. ``chosen`` is the winning row of ``rows`` (None when refused);
    ``model`` is the chosen network (``nn.Module`` for fp32, a :class:`~monai_prune.Predictor` for int8);
    ``pipeline`` the pipeline-knob stage's result (:func:`~monai_prune.search.knobs.knob_stage`), None when no knob
    was searched."""

    status: str
    dense: Dict[str, Any]
    rows: List[Dict[str, Any]]
    chosen: Optional[Dict[str, Any]]
    out_dir: str
    reason: str = ""
    model: Any = None
    card: Any = None
    paths: Dict[str, str] = field(default_factory=dict)
    pipeline: Optional[Dict[str, Any]] = None

    def table(self) -> str:
        """The candidates as a Markdown table (best first)."""
        return candidates_table(self.dense, self.rows, self.chosen)


def save_examples(examples: Mapping[str, Optional[str]], path: str) -> str:
    """One ``examples.npz`` with ``<who>_<array>`` entries (``dense_image``, ``chosen_pred`` ...) for the report."""
    arrays = {}
    for who, stored in examples.items():
        if stored and os.path.exists(stored):
            with np.load(stored) as data:
                arrays.update({f"{who}_{name}": data[name] for name in data.files})
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return path


def fidelity_card(ctx: SearchContext, dense: DenseReference, chosen: Verdict, agreement: Optional[Dict[str, Any]],
                  vs_dense: Optional[Dict[str, Any]], pipeline: Optional[Dict[str, Any]] = None) -> FidelityCard:
    """The chosen model's :class:`~monai_prune.fidelity.FidelityCard`."""
    comp, candidate = chosen.comparison, chosen.candidate
    data = {"title": f"{ctx.title}: {chosen.key}", "task": candidate.measured.get("task", "segmentation"),
            "per_class": comp["per_class"],
            "latency_s": {"before": comp["latency_s"]["before"], "after": comp["latency_s"]["after"],
                          "what": f"the search's latency workload (dense: torch; candidate: {candidate.backend}"
                                  + ("; median over rounds of dense and candidate timed back to back)"
                                     if comp["latency_s"]["confirmed"] else ")")},
            "macs": comp["macs"], "params": {"before": dense.params, "after": candidate.params},
            "size_bytes": {"before": dense.size_bytes, "after": candidate.size_bytes},
            "backend_agreement": agreement, "guardrails": ctx.guardrails, "broken": chosen.broken,
            "cases": candidate.measured.get("cases"), "notes": []}
    if vs_dense is not None:
        data["notes"].append(agreement_note(vs_dense, f"{len(ctx.agreement_inputs)} held-out input(s)"))
    if pipeline is not None:
        data["notes"].append(pipeline_note(pipeline))
    return FidelityCard(**data)


def pipeline_note(pipeline: Mapping[str, Any]) -> str:
    """The card's sentence on the pipeline setting: what ships, measured, or that the baseline stays."""
    shipped, base = pipeline["shipped"], pipeline["rows"][0]
    if shipped is None:
        return (f"Pipeline knobs searched ({len(pipeline['lines'])} setting(s), in search.json and candidates.md): no "
                f"setting both held every guardrail and saved more than {pipeline['min_saving_pct']:.0f}% of the "
                f"time, so the workload's own setting "
                f"({settings_text(pipeline['baseline'])}) is kept.")
    worst = shipped["worst_class"]
    return (f"Pipeline setting: {settings_text(shipped['overrides'])} instead of "
            f"{settings_text(shipped['from'])} (chosen/pipeline.json): the workload takes {shipped['seconds']:.3f} s "
            f"instead of {base['seconds']:.3f} s ({shipped['saving_pct']:.0f}% less), {shipped['speedup']:.2f}x faster "
            f"than the dense model at its setting ({base['speedup']:.2f}x without the knobs); measured per class "
            f"against the dense model with every guardrail held, worst class {worst} "
            f"{shipped['metric']} {shipped['worst_delta']:+.4f}. The table above is at the workload's own setting.")



def export_chosen(ctx: SearchContext, builder: CandidateBuilder, dense: DenseReference, chosen: Verdict,
                  pipeline: Optional[Dict[str, Any]] = None
                  ) -> Tuple[Any, FidelityCard, Dict[str, str], Dict[str, Any]]:
    """``OUT/chosen/`` (``model.pt``, ``plan.json``, ``model.onnx``, the int8 artifact when int8 won, the fidelity
    card), replaced as a whole; returns ``(model, card, paths, agreement with the dense model)``."""
    from ..export import export_onnx
    from ..fidelity import backend_agreement, prediction_agreement

    candidate = chosen.candidate
    folder = os.path.join(ctx.out_dir, "chosen")
    staging = folder + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    net = builder.build(candidate.ratio, candidate.mode)
    source = ctx.folder(candidate.model_key)
    for name in ("model.pt", "plan.json"):
        shutil.copy2(os.path.join(source, name), os.path.join(staging, name))
    onnx = export_onnx(net, ctx.example, os.path.join(staging, "model.onnx")).path
    model: Any = net
    if candidate.precision == "int8":
        from ..runtime import Predictor

        artifact = candidate.artifact
        target = os.path.join(staging, "int8_" + os.path.basename(artifact.rstrip(os.sep)))
        (shutil.copytree if os.path.isdir(artifact) else shutil.copy2)(artifact, target)
        for companion, copied in zip(model_files(artifact)[1:], model_files(target)[1:]):  # OpenVINO's .bin
            shutil.copy2(companion, copied)
        model = Predictor(artifact, backend=candidate.backend)
    agreement = None
    others = [b for b in ctx.backends if b in ("onnxruntime", "openvino")]
    if others:
        agreement = backend_agreement(net, ctx.agreement_inputs, onnx_path=onnx, backends=others)
    vs_dense = prediction_agreement(ctx.model, model, ctx.agreement_inputs)
    card = fidelity_card(ctx, dense, chosen, agreement, vs_dense, pipeline)
    if pipeline is not None:
        atomic_write_text(os.path.join(staging, "pipeline.json"), json.dumps(json_safe(pipeline_file(pipeline)),
                                                                             indent=1))
    card.to_json(os.path.join(staging, "fidelity_card.json"))
    atomic_write_text(os.path.join(staging, "fidelity_card.md"), card.to_markdown())
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    paths = {"chosen": folder, "fidelity_card": os.path.join(folder, "fidelity_card.md")}
    if pipeline is not None:
        paths["pipeline"] = os.path.join(folder, "pipeline.json")
    return model, card, paths, vs_dense


def pipeline_file(pipeline: Mapping[str, Any]) -> Dict[str, Any]:
    """``chosen/pipeline.json``: the setting to run the chosen model at (``setting``: every knob; ``overrides``: the
    ones that differ from the workload's own), with its measured cost and saving; the baseline when nothing ships."""
    shipped = pipeline["shipped"]
    row = shipped or pipeline["rows"][0]
    return {"setting": row["setting"], "overrides": row["overrides"], "baseline": pipeline["baseline"],
            "shipped": shipped is not None, "seconds": row["seconds"],
            "baseline_seconds": pipeline["rows"][0]["seconds"], "saving_pct": row["saving_pct"],
            "speedup_vs_dense": row["speedup"], "metric": row["metric"], "delta_vs_dense": row["delta"],
            "delta_vs_chosen": row["delta_vs_chosen"], "candidate": pipeline["candidate"], "lines": pipeline["lines"]}


def finish(ctx: SearchContext, builder: CandidateBuilder, dense: DenseReference, decision: Decision,
           pipeline: Optional[Dict[str, Any]] = None) -> SearchResult:
    """Write the outputs of ``decision`` (and of the pipeline-knob stage, ``pipeline``); return the
    :class:`SearchResult`, or raise :class:`SearchError` (after
    writing ``search.json`` and the plots) when the search refused."""
    rows, chosen = decision.rows()
    dense_row, out_dir, reason = dense.to_record(), ctx.out_dir, decision.reason
    paths: Dict[str, str] = {}
    result = SearchResult(status=decision.status, dense=dense_row, rows=rows, chosen=chosen, out_dir=out_dir,
                          reason=reason, paths=paths, pipeline=pipeline)
    examples = {"dense": dense.example} if dense.example is not None else {}
    vs_dense = None
    if chosen is not None:
        result.model, result.card, chosen_paths, vs_dense = export_chosen(ctx, builder, dense, decision.chosen,
                                                                          pipeline)
        paths.update(chosen_paths)
        if chosen.get("example") is not None:
            examples["chosen"] = chosen["example"]
    if rows:
        paths["pareto"] = plot_pareto(dense_row, rows, chosen, os.path.join(out_dir, "pareto.png"),
                                      objective=ctx.config.objective)
    if examples.get("dense") is not None:
        paths["examples"] = save_examples(examples, os.path.join(out_dir, "examples.npz"))
    for name in ("sensitivity.json", "sensitivity.png"):
        if os.path.exists(os.path.join(out_dir, name)):
            paths[name.replace(".", "_")] = os.path.join(out_dir, name)
    summary = {"status": result.status, "reason": reason, "guardrails": ctx.guardrails,
               "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(ctx.config).items()},
               "backends": ctx.backends, "fingerprint": ctx.log.fingerprint,
               "dense": dense_row, "candidates": rows, "chosen": chosen, "paths": paths}
    if result.card is not None:
        summary["card"] = result.card.to_dict()
        summary["agreement_vs_dense"] = vs_dense
    if pipeline is not None:
        summary["pipeline"] = pipeline
    table = candidates_table(dense_row, rows, chosen)
    if pipeline is not None:
        table += "\n\n## Pipeline knobs of the chosen model\n\n" + knobs_table(pipeline)
    paths["candidates_md"] = atomic_write_text(os.path.join(out_dir, "candidates.md"), table + "\n")
    paths["search_json"] = atomic_write_text(os.path.join(out_dir, "search.json"),
                                             json.dumps(json_safe(summary), indent=1))
    if chosen is None:
        if os.path.isdir(os.path.join(out_dir, "chosen")):
            logger.warning("%s is the choice of an earlier search of this folder under other guardrails; this "
                           "search chose nothing", os.path.join(out_dir, "chosen"))
        logger.error("search refused: %s", reason)
        raise SearchError(reason)
    logger.info("chosen: %s (%.2fx faster than dense torch, MACs %.3f, worst class %s %+.4f)", chosen["key"],
                chosen["speedup"], chosen["macs_ratio"], chosen["worst_class"], chosen["worst_delta"] or 0.0)
    return result
