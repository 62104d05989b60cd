"""Search: the most compressed model that keeps every guardrail, chosen by measurement.

:func:`search` prunes the trained network at several channel ratios (a grid, or a bisection on the largest ratio
that keeps the accuracy guardrails), optionally with per-layer ratios from a :mod:`~monai_prune.sensitivity`
analysis (less where a group is sensitive), gives each candidate a short distillation fine-tune from the dense model
(the caller's ``finetune``), and measures every candidate the same way: per-class metrics (``evaluate``), latency of
the caller's workload (``latency``, e.g. the whole sliding-window inferer) on every backend, MACs, parameters, size;
with ``"int8"`` among the precisions, the passing candidates are also quantized (ONNX Runtime / OpenVINO) and measured
again. The winner is the candidate with the largest measured speed-up (or the fewest MACs, or the smallest file) among
those that hold **every** guardrail of :func:`monai_prune.fidelity.check_guardrails`, per class.

Every measurement is one JSON line in ``OUT/candidates.jsonl``, written as soon as it is taken: an interrupted search
run again with the same ``OUT`` continues where it stopped (fine-tuned models are kept under ``OUT/candidates/``), and a
search re-run with other guardrails reuses every measurement and only re-decides. A log made by another setup (other
weights, input shape, fine-tuning) is refused, never mixed in.

Outputs in ``OUT``: ``search.json`` (dense, every candidate, the choice or the refusal), ``candidates.md``,
``pareto.png`` (accuracy vs speed-up and vs size, guardrail-breaking points hollow, the choice starred), ``chosen/``
(``model.pt`` + ``plan.json`` + ``model.onnx``, the int8 artifact when int8 won, ``fidelity_card.json``/``.md``) and,
when ``evaluate`` returns an ``"example"`` slice, ``examples.npz`` for ``monai-prune report``.

The package, in pipeline order: :mod:`.config` (what is tried, argument checks), :mod:`.log` (the search log),
:mod:`.candidates` (the typed measurements), :mod:`.build` (prune, fine-tune, quantize), :mod:`.measure` (evaluate and
time), :mod:`.decide` (the pure decision), :mod:`.confirm` (paired timings of the finalists), :mod:`.knobs` (the
chosen model's pipeline knobs: ``SearchConfig.pipeline_knobs``, judged by the same guardrails, the passing setting
shipped in ``chosen/pipeline.json``), :mod:`.outputs` (the chosen model, ``search.json``), :mod:`.report` (the Pareto
chart, tables and ``report.md``) and :mod:`.pipeline` (:func:`search`, the stages in order).
"""

import logging

from .candidates import Candidate, DenseReference, PairedTiming, candidate_key
from .config import (ACCURACY_GUARDRAILS, LAYER_MODES, LOG_FORMAT, OBJECTIVES, PRECISIONS, STRATEGIES, Evaluate,
                     SearchConfig, SearchError, check_search_arguments)
from .decide import Decision, Verdict, assess, decide
from .log import SearchLog, check_fingerprint, check_resumable, read_search_log, search_fingerprint
from .outputs import SearchResult
from .pipeline import search
from .report import candidates_table

logger = logging.getLogger(__name__)

__all__ = ["ACCURACY_GUARDRAILS", "LAYER_MODES", "LOG_FORMAT", "OBJECTIVES", "PRECISIONS", "STRATEGIES", "Candidate",
           "Decision", "DenseReference", "Evaluate", "PairedTiming", "SearchConfig", "SearchError", "SearchLog",
           "SearchResult", "Verdict", "assess", "candidate_key", "candidates_table", "check_fingerprint",
           "check_resumable", "check_search_arguments", "decide", "read_search_log", "search", "search_fingerprint"]
