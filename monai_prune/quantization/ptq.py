"""Post-training int8 quantization: ``quantize(model, calibration, QuantizationConfig(...))``.

The network is exported to ONNX (fp32, dynamic batch and spatial axes), then quantized by a real CPU int8 backend:

* ``"onnxruntime"``: ``onnxruntime.quantization.quantize_static`` (QDQ, int8 weights per channel, uint8
  activations; calibration min-max, percentile or entropy) -> ``model_int8.onnx``;
* ``"openvino"``: OpenVINO IR converted from the ONNX, quantized by NNCF PTQ -> ``model_int8.xml``/``.bin``.

Each backend is a module of :mod:`monai_prune.quantization.backends`; this module dispatches to them.

Afterwards, measured and reported, never assumed:

* which layers run int8 and which stayed fp32 (by name: the torch module path, e.g. ``model.2.0.conv``);
* fidelity on held-out inputs, int8 vs fp32: voxel (or sample) argmax agreement, max |logit difference|, and
  per-class Dice between the int8 and fp32 segmentations; with ``max_delta`` the most sensitive layers (measured
  one by one) go back to fp32 until the tolerances hold, or a :class:`QuantizationError` says they cannot;
* speed on the target shape, int8 vs fp32 on the same backend: an int8 model slower than fp32 is flagged
  (``result.slower_than_fp32``, a warning in the log and in the report) and ``result.recommended`` says which file
  to serve for speed. With ``backend="auto"`` every installed backend is tried and the fastest int8 that meets the
  tolerances wins.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..errors import BackendUnavailableError, ConfigError, InputError, QuantizationError
from ..export import export_onnx
from ..measure import time_call
from ..runtime.registry import INT8_BACKENDS, artifact_size
from ..utils import atomic_write_text, root_logging_for_others
from .backends import METHODS, fp32_model_file, int8_layer_names, quant_backend_available, run_backend, runner
from .backends.openvino import ov_int8_layers  # noqa: F401  (public here before the backends moved)
from .calibration import CalibrationSet
from .int8_fidelity import error_score, fidelity_violations, measure_fidelity
from .onnx_layers import ONNX_INPUT, WEIGHTED_OPS, onnx_weighted_layers, resolve_layers  # noqa: F401

logger = logging.getLogger(__name__)
NOISE = ("Expected bias", "Axis 1 is out-of-range for weight", "Please consider pre-processing before quantization",
         "Please consider to run pre-processing before quantization")

QUANT_BACKENDS = INT8_BACKENDS
DELTA_KEYS = ("max_abs_logit", "agreement", "dice", "accuracy", "auc")


@dataclass
class QuantizationConfig:
    """How to quantize.

    Args:
        backend: ``"auto"`` (every installed backend, fastest int8 within tolerance), ``"onnxruntime"`` or
            ``"openvino"``.
        method: activation range calibration: ``"minmax"``; ONNX Runtime also ``"percentile"``, ``"entropy"``.
        per_channel: per-output-channel weight scales (recommended for convolutions).
        keep_fp32: layers never quantized, by torch module name (``"model.2.0.conv"``) or ONNX node name.
        max_delta: tolerances, int8 vs fp32 on the validation inputs: ``"max_abs_logit"`` (absolute),
            ``"agreement"`` (allowed drop of argmax agreement below 1), ``"dice"`` (allowed drop of the
            per-class Dice between int8 and fp32 segmentations below 1, or of the per-class Dice against the labels
            when validation has labels), and for classifiers with labels ``"accuracy"`` and ``"auc"`` (allowed
            drop of accuracy and of each class's one-vs-rest AUC, int8 vs fp32). Empty: measure and report only.
        max_fallback_layers: give up (``QuantizationError``) when more layers than this would have to stay fp32.
        out_dir: where ``model_fp32.onnx``, the int8 artifact and ``quantization.json`` go (default: a new
            temporary folder, kept).
        timing_fn: ``timing_fn(predictor)`` runs the workload to time (e.g. a whole ``sliding_window_inference``);
            default: one call on a calibration-shaped input.
        repeats: timed runs per variant (the median is kept).
    """

    backend: str = "auto"
    method: str = "minmax"
    per_channel: bool = True
    keep_fp32: List[str] = field(default_factory=list)
    max_delta: Dict[str, float] = field(default_factory=dict)
    max_fallback_layers: int = 8
    out_dir: Optional[str] = None
    timing_fn: Optional[Callable] = None
    repeats: int = 3

    def validate(self) -> None:
        if self.backend not in QUANT_BACKENDS + ("auto",):
            raise ConfigError(f"backend must be one of {QUANT_BACKENDS + ('auto',)}, got {self.backend!r}")
        methods = sorted({m for ms in METHODS.values() for m in ms})
        if self.method not in methods:
            raise ConfigError(f"method must be one of {methods}, got {self.method!r}")
        if self.backend != "auto" and self.method not in METHODS[self.backend]:
            raise ConfigError(f"the {self.backend} backend calibrates with {METHODS[self.backend]}, not {self.method!r}")
        unknown = [k for k in self.max_delta if k not in DELTA_KEYS]
        if unknown:
            raise ConfigError(f"max_delta keys must be among {DELTA_KEYS}, got {unknown}")
        bad = {k: v for k, v in self.max_delta.items() if not isinstance(v, (int, float)) or v < 0}
        if bad:
            raise ConfigError(f"max_delta values must be non-negative numbers, got {bad}")
        if not isinstance(self.max_fallback_layers, int) or self.max_fallback_layers < 0:
            raise ConfigError(f"max_fallback_layers must be a non-negative integer, got {self.max_fallback_layers!r}")
        if self.repeats < 1:
            raise ConfigError(f"repeats must be at least 1, got {self.repeats}")


@dataclass
class QuantizedModel:
    """The int8 artifact and what was measured about it."""

    path: str
    backend: str
    fp32_path: str
    int8_layers: List[str]
    fp32_layers: List[str]
    fallback_layers: List[str]
    fidelity: Dict[str, object]
    latency_s: Dict[str, float]
    size_bytes: Dict[str, int]
    calibration: Dict[str, object]
    config: Dict[str, object]
    warnings: List[str] = field(default_factory=list)
    candidates: Dict[str, Dict[str, object]] = field(default_factory=dict)
    report_path: Optional[str] = None

    @property
    def speedup(self) -> float:
        """fp32 latency / int8 latency on the same backend (> 1: int8 is faster)."""
        return self.latency_s["fp32"] / self.latency_s["int8"]

    @property
    def slower_than_fp32(self) -> bool:
        return self.latency_s["int8"] > self.latency_s["fp32"]

    @property
    def recommended(self) -> str:
        """The file to serve for speed: the int8 one, unless it measured slower than fp32."""
        return self.fp32_path if self.slower_than_fp32 else self.path

    def predictor(self, which: str = "int8", **kwargs):
        """A :class:`monai_prune.Predictor` over the int8 (or ``"fp32"``/``"recommended"``) file."""
        from ..runtime import Predictor

        if which not in ("int8", "fp32", "recommended"):
            raise ConfigError(f"which must be 'int8', 'fp32' or 'recommended', got {which!r}")
        path = {"int8": self.path, "fp32": self.fp32_path, "recommended": self.recommended}[which]
        return Predictor(path, backend=self.backend, **kwargs)

    def to_dict(self) -> Dict[str, object]:
        data = asdict(self)
        data.update(speedup=self.speedup, slower_than_fp32=self.slower_than_fp32, recommended=self.recommended)
        return data


def _latency(path: str, backend: str, example: torch.Tensor, config: QuantizationConfig) -> float:
    from ..runtime import Predictor

    predictor = Predictor(path, example_input=example, backend=backend)
    work = config.timing_fn if config.timing_fn is not None else (lambda p: p(example))
    return time_call(lambda: work(predictor), repeats=config.repeats)["median_s"]  # the warm-up call compiles


def _quantize_one(backend, fp32_onnx, out_dir, calibration, validation, config, layers, keep,
                  labels=None) -> QuantizedModel:
    fp32_path = fp32_model_file(backend, fp32_onnx, out_dir)
    fp32_runner = runner(backend, fp32_path)
    reference = [fp32_runner(x.numpy()) for x in validation]
    excluded = list(keep)
    path = run_backend(backend, fp32_onnx, out_dir, calibration, config, list(layers), excluded)
    fidelity = measure_fidelity(reference, runner(backend, path), validation, labels)
    fallback: List[str] = []
    over = fidelity_violations(fidelity, config.max_delta)
    if over:
        logger.info("%s int8 misses the tolerances (%s): measuring each layer's sensitivity", backend, over)
        candidates = [n for n in int8_layer_names(backend, path, list(layers)) if n not in excluded]
        sensitivity = {}
        for i, layer in enumerate(candidates):  # quantize this layer alone, measure the damage
            alone = run_backend(backend, fp32_onnx, out_dir, calibration, config, list(layers), excluded, only=[layer],
                                 tag="_probe")
            sensitivity[layer] = error_score(measure_fidelity(reference, runner(backend, alone), validation, labels))
        ranked = sorted(candidates, key=lambda n: -sensitivity[n])
        for layer in ranked:
            if len(fallback) >= config.max_fallback_layers:
                break
            fallback.append(layer)
            path = run_backend(backend, fp32_onnx, out_dir, calibration, config, list(layers), excluded + fallback)
            fidelity = measure_fidelity(reference, runner(backend, path), validation, labels)
            over = fidelity_violations(fidelity, config.max_delta)
            logger.info("kept %s in fp32 (sensitivity %.4g): %s", layers[layer], sensitivity[layer],
                        "tolerances hold" if not over else f"still over by {over}")
            if not over:
                break
        for probe in os.listdir(out_dir):
            if probe.startswith("model_int8_probe"):
                os.remove(os.path.join(out_dir, probe))
        if over:
            raise QuantizationError(
                f"{backend} int8 cannot meet max_delta={config.max_delta}: with the {len(fallback)} most sensitive "
                f"layers kept in fp32 ({', '.join(layers[n] for n in fallback)}) it is still over by {over}; "
                f"raise max_fallback_layers (now {config.max_fallback_layers}), loosen max_delta, or try another "
                "backend/method")
    int8 = int8_layer_names(backend, path, list(layers))
    example = calibration.samples[0]
    latency = {"fp32": _latency(fp32_path, backend, example, config), "int8": _latency(path, backend, example, config)}
    result = QuantizedModel(
        path=path, backend=backend, fp32_path=fp32_path, int8_layers=[layers[n] for n in int8],
        fp32_layers=[m for n, m in layers.items() if n not in set(int8)],
        fallback_layers=[layers[n] for n in fallback], fidelity=fidelity, latency_s=latency,
        size_bytes={"fp32": artifact_size(fp32_path), "int8": artifact_size(path)},
        calibration=calibration.describe(), config={k: v for k, v in asdict(config).items() if k != "timing_fn"},
    )
    if result.slower_than_fp32:
        message = (f"int8 on {backend} is SLOWER than fp32 ({latency['int8']:.4g} s vs {latency['fp32']:.4g} s, "
                   f"{result.speedup:.2f}x): serve {os.path.basename(result.fp32_path)} for speed; the int8 file is "
                   f"{result.size_bytes['fp32'] / result.size_bytes['int8']:.1f}x smaller")
        result.warnings.append(message)
        logger.warning(message)
    return result


def _check_labels(model: nn.Module, example: torch.Tensor, validation: Sequence[torch.Tensor],
                  labels: Sequence[torch.Tensor], max_delta: Dict[str, float]) -> None:
    """Labels fit the task the network's output shape says: one class per voxel (segmentation, output
    ``B x C x spatial``) or one class index per sample (classification, output ``B x C``)."""
    with torch.no_grad():
        out = model.eval()(example[:1])
    out = out[0] if isinstance(out, (tuple, list)) else out
    classifier = out.dim() == 2
    for lab, v in zip(labels, validation):
        wanted = v.shape[0] if classifier else v[0, 0].numel()
        if lab.numel() != wanted:
            kind = "one class index per sample" if classifier else "one value per voxel of its input"
            raise InputError(f"each validation label must have {kind} (got {lab.numel()} values for an input of "
                             f"shape {tuple(v.shape)})")
    if classifier and any(float(lab.min()) < 0 or float(lab.max()) >= out.shape[1] for lab in labels):
        raise InputError(f"classification labels must be class indices in [0, {out.shape[1]})")
    wrong = [k for k in max_delta if k in (("dice",) if classifier else ("accuracy", "auc"))]
    if wrong:
        task = "a classifier" if classifier else "a segmentation network"
        raise ConfigError(f"max_delta {wrong} does not apply to {task}")


def quantize(model: nn.Module, calibration: CalibrationSet, config: Optional[QuantizationConfig] = None,
             validation: Optional[Sequence[torch.Tensor]] = None, **options) -> QuantizedModel:
    """Quantize ``model`` to int8 with ``calibration`` data; returns the artifact and what was measured.

    Args:
        model: a (pruned or dense) ``torch.nn.Module``; it is not modified.
        calibration: from :func:`monai_prune.quantization.calibration_data`.
        config: a :class:`QuantizationConfig`; keyword ``options`` override its fields.
        validation: held-out inputs shaped like the calibration samples, for the fidelity check (a
            ``CalibrationSet`` from other data works), or ``(input, label)`` pairs / ``{"image", "label"}`` dicts:
            then per-class Dice (segmentation; a label map per input) or accuracy and per-class AUC
            (classification; a class index per sample) against the labels is measured for fp32 and int8, and
            ``max_delta["dice"]`` / ``["accuracy"]`` / ``["auc"]`` bound the drop. Default: the calibration
            samples, and the report says so.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"quantize expects a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(calibration, CalibrationSet):
        raise InputError("calibration must come from monai_prune.quantization.calibration_data(...)")
    if len(calibration) == 0:
        raise ConfigError("the calibration set is empty")
    config = QuantizationConfig(**{**asdict(config), **options}) if config is not None else QuantizationConfig(**options)
    config.validate()
    example = calibration.samples[0]
    warnings_ = []
    if validation is None:
        validation = calibration.samples
        warnings_.append("fidelity measured on the calibration samples: give validation= held-out data")
    labels = None
    pairs = [v for v in validation if isinstance(v, (tuple, list, dict))]
    if pairs:
        if len(pairs) != len(validation):
            raise InputError("validation mixes plain inputs and (input, label) pairs")
        labels = [torch.as_tensor(v["label"] if isinstance(v, dict) else v[1]) for v in validation]
        validation = [torch.as_tensor(v["image"] if isinstance(v, dict) else v[0]).float() for v in validation]
    validation = [v if v.dim() == example.dim() else v.unsqueeze(0) for v in validation]
    if labels is not None:
        _check_labels(model, example, validation, labels, config.max_delta)
    elif any(k in config.max_delta for k in ("accuracy", "auc")):
        raise ConfigError("max_delta 'accuracy'/'auc' are measured against labels: give validation= as "
                          "(input, class index) pairs")
    if not validation or any(tuple(v.shape[1:]) != tuple(example.shape[1:]) for v in validation):
        raise InputError(f"validation inputs must be shaped like the calibration samples {tuple(example.shape)}")
    out_dir = config.out_dir or tempfile.mkdtemp(prefix="monai_prune_int8_")
    os.makedirs(out_dir, exist_ok=True)
    fp32_onnx = export_onnx(model, example, os.path.join(out_dir, "model_fp32.onnx")).path
    layers = onnx_weighted_layers(fp32_onnx)
    keep = sorted({n for nodes in resolve_layers(config.keep_fp32, layers).values() for n in nodes})

    backends = [config.backend] if config.backend != "auto" else [b for b in QUANT_BACKENDS if quant_backend_available(b)
                                                                   and config.method in METHODS[b]]
    if config.backend != "auto" and not quant_backend_available(config.backend):
        raise BackendUnavailableError(f"backend {config.backend!r} is not installed: pip install 'monai-prune[openvino]'")
    results: Dict[str, QuantizedModel] = {}
    failures: Dict[str, str] = {}
    for backend in backends:
        try:
            # ONNX Runtime's tools log through the root logger: one "Expected bias ..." line per folded-BN Conv, one
            # "Axis 1 is out-of-range for weight ..." per 1-D norm weight (quantized per tensor instead) and advice to
            # run its own pre-processing: nothing a user of ours can act on
            with root_logging_for_others(drop=NOISE):
                results[backend] = _quantize_one(backend, fp32_onnx, out_dir, calibration, validation, config, layers,
                                                 keep, labels)
        except QuantizationError as e:
            if config.backend != "auto":
                raise
            failures[backend] = str(e)
            logger.warning("auto: %s", e)
    if not results:
        raise QuantizationError("no backend met the tolerances: " + "; ".join(f"{b}: {m}" for b, m in failures.items()))
    best = min(results.values(), key=lambda r: r.latency_s["int8"])
    best.warnings = warnings_ + best.warnings
    best.candidates = {b: {"latency_s": r.latency_s, "fidelity": r.fidelity, "path": r.path,
                           "size_bytes": r.size_bytes} for b, r in results.items()}
    best.candidates.update({b: {"error": m} for b, m in failures.items()})
    if len(results) > 1:
        logger.info("auto: int8 on %s is the fastest (%s)", best.backend,
                    ", ".join(f"{b} {r.latency_s['int8']:.4g} s" for b, r in results.items()))
    best.report_path = atomic_write_text(os.path.join(out_dir, "quantization.json"),
                                         json.dumps(best.to_dict(), indent=1, default=str))
    logger.info("int8 (%s): %d layers int8, %d fp32; agreement %.4f, max |dlogit| %.3g; %.2fx vs fp32, %.1fx smaller",
                best.backend, len(best.int8_layers), len(best.fp32_layers), best.fidelity["agreement"],
                best.fidelity["max_abs_logit"], best.speedup, best.size_bytes["fp32"] / best.size_bytes["int8"])
    return best
