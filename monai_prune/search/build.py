"""The build stage: the candidates' models. Each ``(ratio, mode)`` is pruned (the same ratio in every group, or
per-layer ratios from a sensitivity analysis), fine-tuned with distillation from the dense model (the caller's
``finetune``), saved under ``OUT/candidates/<key>/`` and loaded back from there when the log says it was made; int8
candidates are quantized from it (with the layers whose int8 costs most kept fp32, when asked)."""

from __future__ import annotations

import copy
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from ..pruning import PruningPlan, apply_plan, prune_channels
from ..utils import atomic_path
from .candidates import candidate_key
from .config import sensitivity_tolerance
from .context import SearchContext

logger = logging.getLogger(__package__)  # "monai_prune.search": the name the command line prints

FlatMetrics = Callable[[Any], Dict[str, float]]


class CandidateBuilder:
    """Makes (or reloads) the pruned, fine-tuned model of each ``(ratio, mode)`` and quantizes it; keeps them in
    memory for the rest of the search."""

    def __init__(self, ctx: SearchContext, finetune: Optional[Callable[[nn.Module, nn.Module], None]],
                 network_def: Optional[Dict[str, Any]], calibration=None) -> None:
        self.ctx, self.finetune, self.network_def, self.calibration = ctx, finetune, network_def, calibration
        self.models: Dict[str, nn.Module] = {}
        self.sensitivity_result = None

    @property
    def tolerance(self) -> float:
        return sensitivity_tolerance(self.ctx.config, self.ctx.guardrails)

    def analyse_sensitivity(self, flat_metrics: FlatMetrics) -> None:
        """Prune each group alone at each ``sensitivity_ratios`` (cached in ``OUT/sensitivity_cache.json``): the
        per-layer ratios of ``"sensitivity"`` candidates; ``sensitivity.json`` and ``.png`` in ``OUT``."""
        from ..sensitivity import sensitivity_analysis

        ctx = self.ctx
        result = sensitivity_analysis(ctx.model, ctx.example, flat_metrics, ratios=ctx.config.sensitivity_ratios,
                                      cache=os.path.join(ctx.out_dir, "sensitivity_cache.json"),
                                      evaluate_id=f"search:{ctx.log.fingerprint['setup']}")
        result.to_json(os.path.join(ctx.out_dir, "sensitivity.json"))
        try:
            result.plot(os.path.join(ctx.out_dir, "sensitivity.png"), metric="worst_class")
        except Exception as e:  # a plot is a convenience; the table is the result
            logger.warning("sensitivity plot not written: %s", e)
        self.sensitivity_result = result

    def build(self, ratio: float, mode: str) -> nn.Module:
        """The pruned and fine-tuned model of ``(ratio, mode)``: from ``OUT/candidates/`` when the log says it was
        made, else pruned, fine-tuned and saved (atomically) now."""
        ctx, key = self.ctx, candidate_key(ratio, mode)
        if key in self.models:
            return self.models[key]
        folder = ctx.folder(key)
        if ctx.log.get(f"{key}/model") is not None and os.path.exists(os.path.join(folder, "model.pt")):
            net = apply_plan(copy.deepcopy(ctx.model), PruningPlan.load(os.path.join(folder, "plan.json")))
            net.load_state_dict(torch.load(os.path.join(folder, "model.pt"), weights_only=True))
            self.models[key] = net.eval()
            return self.models[key]
        options: Dict[str, Any] = {"importance": ctx.config.importance, "seed": ctx.config.seed}
        if mode == "sensitivity":
            layer_ratios = self.sensitivity_result.suggest_layer_ratios(ratio, self.tolerance, metric="worst_class")
            options["layer_ratios"] = {k: v for k, v in layer_ratios.items() if v > 0}
            ratio_arg = 0.0  # groups without a suggested ratio (too sensitive) stay whole
        else:
            ratio_arg = ratio
        start = time.time()
        logger.info("candidate %s: pruning%s", key, " + fine-tuning with distillation" if self.finetune else "")
        net, plan = prune_channels(ctx.model, ctx.example, ratio_arg, network_def=self.network_def, **options)
        if self.finetune is not None:
            net.train()
            self.finetune(net, ctx.model)
        net.eval()
        os.makedirs(folder, exist_ok=True)
        plan.save(os.path.join(folder, "plan.json"))
        with atomic_path(os.path.join(folder, "model.pt")) as tmp:
            torch.save(net.state_dict(), tmp)
        ctx.log.put({"kind": "model", "key": f"{key}/model", "ratio": ratio, "mode": mode,
                     "layer_ratios": options.get("layer_ratios"), "build_s": time.time() - start})
        self.models[key] = net
        return net

    @property
    def int8_guided(self) -> bool:
        """Whether int8 candidates keep fp32 the layers whose int8 alone costs most (``int8_keep_fp32``)."""
        return self.ctx.config.int8_keep_fp32 == "sensitivity"

    def int8_folder(self, ratio: float, mode: str, backend: str) -> str:
        """Where the int8 model of ``(ratio, mode)`` on ``backend`` is written."""
        return os.path.join(self.ctx.folder(candidate_key(ratio, mode)),
                            f"int8_{backend}" + ("_sens" if self.int8_guided else ""))

    def quantize(self, net: nn.Module, ratio: float, mode: str, backend: str, keep_fp32: List[str]) -> Any:
        """Quantize's result for ``net``, the model of ``(ratio, mode)``, in int8 on ``backend`` with ``keep_fp32``
        left fp32, written under the candidate's folder. Raises :class:`~monai_prune.errors.QuantizationError`."""
        from ..quantization import quantize

        return quantize(net, self.calibration, backend=backend, out_dir=self.int8_folder(ratio, mode, backend),
                        repeats=1, keep_fp32=keep_fp32)

    def int8_sensitive_layers(self, net: nn.Module, ratio: float, mode: str, backend: str,
                              flat_metrics: FlatMetrics) -> List[str]:
        """Layers whose int8 alone costs the worst class more than the tolerance (:func:`~monai_prune.quantization.
        quantization_sensitivity` on this candidate and backend, cached), to keep fp32."""
        from ..quantization import quantization_sensitivity

        ctx, key = self.ctx, candidate_key(ratio, mode)
        name = f"quant_sensitivity_{key}_{backend}"
        result = quantization_sensitivity(net, self.calibration, flat_metrics, backend=backend,
                                          cache=os.path.join(ctx.out_dir, "quant_sensitivity_cache.json"),
                                          evaluate_id=f"search:{ctx.log.fingerprint['setup']}")
        result.to_json(os.path.join(ctx.out_dir, name + ".json"))
        tolerance = self.tolerance
        try:
            result.plot(os.path.join(ctx.out_dir, name + ".png"), metric="worst_class", max_delta=tolerance)
        except Exception as e:  # a plot is a convenience; the table is the result
            logger.warning("int8 sensitivity plot not written: %s", e)
        keep = result.suggest_keep_fp32(tolerance, metric="worst_class")
        logger.info("candidate %s on %s: int8 sensitivity keeps %s fp32", key, backend, keep or "nothing")
        return keep
