"""``Predictor``: serve a (pruned) network through a real runtime, as a callable MONAI inferers accept.

Fewer MACs are not fewer seconds in eager PyTorch: at batch 1 a 50%-pruned 3D UNet was slower in eager mode
and about 2x faster in ONNX Runtime. The predictor wraps one backend — ``torch`` (eager), ``torchscript``,
``onnxruntime`` or ``openvino`` — behind ``predictor(x) -> tensor``; ``backend="auto"`` times each available
backend on the machine it runs on and keeps the fastest, saying which it picked and why.

Bad input is named before a runtime's C++ trace can be: a corrupt or truncated model file when it is first read,
an input of the wrong rank or channel count against the shape the model file declares (ONNX/OpenVINO) or, for
the torch backends, against ``example_input`` or the first layer once the call has failed.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import tempfile
import time
import warnings
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import BackendUnavailableError, ConfigError, InputError
from ..export import export_onnx, export_openvino
from ..measure import error_line, first_layer_input, input_mismatch, shape_text, time_call
from ..utils import first_output
from .registry import BACKENDS, FILE_SHAPED, available_backends, model_files

logger = logging.getLogger(__name__)

def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def _check_onnx_file(path: str) -> None:
    """Parse a user's ONNX file once (protobuf only, no external data): a truncated one fails here, by name."""
    import onnx

    try:
        onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf's DecodeError, or an unreadable file
        raise InputError(f"{path} is corrupt or truncated ({error_line(e)}); export it again with export_onnx") from e


def ort_session(path: str, options=None, providers: Optional[Sequence[str]] = None):
    """An ONNX Runtime session that runs a model as written: with ``WeightBiasQuantization`` disabled (from ONNX
    Runtime 1.2x on, at every optimisation level, it quantizes the float weights of a Conv that sits between a
    DequantizeLinear and a QuantizeLinear, i.e. exactly a layer that int8 quantization kept in fp32)."""
    import onnxruntime as ort

    return ort.InferenceSession(path, options or ort.SessionOptions(), providers=list(providers or
                                                                                     ["CPUExecutionProvider"]),
                                disabled_optimizers=["WeightBiasQuantization"])


class Predictor:
    """A network behind one runtime, callable as ``predictor(batch) -> torch.Tensor``.

    Args:
        model: a ``torch.nn.Module`` (pruned or not), or a path to ``model.ts`` / ``model.onnx`` / ``model.xml``.
        example_input: a tensor shaped like one network input (batch may differ at call time); needed to trace
            and export a module, and to time backends for ``"auto"``.
        backend: one of ``"torch"``, ``"torchscript"``, ``"onnxruntime"``, ``"openvino"``, or ``"auto"``.
        candidates: for ``"auto"``, the backends to try (default: every available one that fits the model).
        timing_fn: for ``"auto"``, ``timing_fn(predictor)`` runs the workload to time (e.g. a whole
            ``sliding_window_inference``); default: one call on ``example_input``.
        num_threads: intra-op threads for ONNX Runtime/OpenVINO (default: the runtime's choice).
        device: ``"cpu"`` or ``"cuda"`` for the torch backends (ONNX Runtime uses CUDA when it has it).
        work_dir: where exported files go (default: a temporary directory kept as long as the predictor).

    ``predictor.backend`` says which backend runs, ``predictor.timings`` holds the measured seconds per backend.
    """

    def __init__(
        self,
        model,
        example_input: Optional[torch.Tensor] = None,
        backend: str = "auto",
        candidates: Optional[Sequence[str]] = None,
        timing_fn: Optional[Callable[["Predictor"], None]] = None,
        num_threads: Optional[int] = None,
        device: str = "cpu",
        work_dir: Optional[str] = None,
        repeats: int = 3,
    ) -> None:
        if backend not in BACKENDS + ("auto",):
            raise ConfigError(f"backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
        self.example_input = example_input
        self.num_threads = num_threads
        self.device = torch.device(device)
        self._tmp = None if work_dir else tempfile.TemporaryDirectory(prefix="monai_prune_")
        self.work_dir = work_dir or self._tmp.name
        os.makedirs(self.work_dir, exist_ok=True)
        self.model = self._load_source(model)
        self._source = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
        self.timings: Dict[str, float] = {}
        self._onnx_path: Optional[str] = None
        self._inputs: Dict[str, Optional[Tuple[Optional[int], ...]]] = {}  # backend -> the input shape it takes
        if backend == "auto":
            self.backend = self._pick(candidates, timing_fn, repeats)
        else:
            self.backend = backend
            self._run = self._build(backend)

    # ----------------------------------------------------------------------------------------- sources
    def _load_source(self, model):
        if isinstance(model, nn.Module):
            return copy.deepcopy(model).eval().to(self.device)
        if isinstance(model, (str, os.PathLike)):
            path = str(model)
            if not os.path.exists(path):
                raise InputError(f"model file {path} does not exist; give the path of a .ts, .onnx or .xml model "
                                 "file (export_torchscript, export_onnx, export_openvino write them)")
            if path.endswith(".ts"):
                try:
                    return torch.jit.load(path, map_location=self.device).eval()
                except RuntimeError as e:
                    raise InputError(f"{path} is corrupt or truncated ({error_line(e)}); export it again with "
                                     "export_torchscript") from e
            if path.endswith((".onnx", ".xml")):
                return path
            raise InputError(f"cannot tell the format of {path}: expected .ts, .onnx or .xml")
        raise InputError(f"Predictor expects a torch.nn.Module or a model file path, got {type(model).__name__}")

    def _need_example(self, what: str) -> torch.Tensor:
        if self.example_input is None:
            raise ConfigError(f"{what} needs example_input=<tensor shaped like one network input>")
        return self.example_input

    def _onnx(self) -> str:
        if self._onnx_path is None and isinstance(self.model, str) and self.model.endswith(".onnx"):
            _check_onnx_file(self.model)
            self._onnx_path = self.model
        if self._onnx_path is None:
            if not isinstance(self.model, nn.Module):
                raise BackendUnavailableError("ONNX Runtime/OpenVINO need an nn.Module or an .onnx file")
            self._onnx_path = os.path.join(self.work_dir, "model.onnx")
            export_onnx(self.model.cpu(), self._need_example("ONNX export").cpu(), self._onnx_path)
            self.model.to(self.device)
        return self._onnx_path

    # ----------------------------------------------------------------------------------------- backends
    def _build(self, backend: str) -> Callable[[torch.Tensor], torch.Tensor]:
        if backend not in available_backends():
            raise BackendUnavailableError(f"backend {backend!r} is not installed (pip install 'monai-prune[openvino]')")
        if backend in ("torch", "torchscript"):
            self._inputs[backend] = self._torch_input()
        if backend == "torch":
            if not isinstance(self.model, nn.Module):
                raise BackendUnavailableError("the torch backend needs an nn.Module or a TorchScript file")
            return self._torch_call(self.model)
        if backend == "torchscript":
            if isinstance(self.model, torch.jit.ScriptModule):
                return self._torch_call(self.model)
            if not isinstance(self.model, nn.Module):
                raise BackendUnavailableError("the torchscript backend needs an nn.Module or a .ts file")
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(self.model, self._need_example("tracing").to(self.device), check_trace=False)
                traced = torch.jit.freeze(traced.eval())
            return self._torch_call(traced)
        if backend == "onnxruntime":
            return self._ort_call()
        return self._openvino_call()

    def _torch_input(self):
        """The input the torch backends take: shaped like ``example_input`` (any batch and spatial size), or as the
        first Conv layer of the module or TorchScript file says."""
        if isinstance(self.example_input, torch.Tensor):
            return (None, self.example_input.shape[1]) + (None,) * (self.example_input.dim() - 2)
        first = first_layer_input(self.model) if isinstance(self.model, nn.Module) else None
        return first[2] if first else None

    def _torch_call(self, module):
        device = self.device

        def run(x):
            with torch.no_grad():
                return first_output(module(x.to(device)))

        return run

    def _ort_call(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.num_threads:
            options.intra_op_num_threads = self.num_threads
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        path = self._onnx()
        try:
            session = ort_session(path, options, providers)
        except Exception as e:  # onnx parsed it: a graph or an operator this ONNX Runtime cannot run
            raise BackendUnavailableError(f"ONNX Runtime cannot load {path} ({error_line(e)})") from e
        declared = session.get_inputs()[0]
        name = declared.name
        self._inputs["onnxruntime"] = tuple(d if isinstance(d, int) else None for d in declared.shape)

        def run(x):
            out = session.run(None, {name: _to_numpy(x)})[0]
            return torch.from_numpy(out).to(x.device if isinstance(x, torch.Tensor) else "cpu")

        return run

    def _openvino_call(self):
        import openvino as ov

        core = ov.Core()
        source = self.model if isinstance(self.model, str) and self.model.endswith(".xml") else None
        if source is None:
            source = os.path.join(self.work_dir, "model.xml")
            export_openvino(self._onnx(), source)
        # fp32 on purpose: OpenVINO may otherwise pick bf16 on CPUs with AMX/AVX512-BF16 and change the numbers
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if self.num_threads:
            config["INFERENCE_NUM_THREADS"] = self.num_threads
        model = self._read_openvino(core, source)
        shape = model.inputs[0].get_partial_shape()  # each call reshapes the model: only rank and channels must fit
        self._inputs["openvino"] = None if shape.rank.is_dynamic else tuple(
            d.get_length() if i == 1 and d.is_static else None for i, d in enumerate(shape))
        requests = {}  # one statically shaped compilation per input shape: faster than a dynamic-shape model

        def run(x):
            data = _to_numpy(x)
            if data.shape not in requests:
                static = model.clone()
                static.reshape({static.inputs[0].get_any_name(): list(data.shape)})
                compiled = core.compile_model(static, "CPU", config)
                requests[data.shape] = (compiled, compiled.create_infer_request())
            compiled, request = requests[data.shape]
            out = request.infer({0: data})[compiled.output(0)]
            return torch.from_numpy(np.array(out)).to(x.device if isinstance(x, torch.Tensor) else "cpu")

        return run

    @staticmethod
    def _read_openvino(core, xml: str):
        weights = model_files(xml)[1]
        try:
            return core.read_model(xml)
        except Exception as e:  # OpenVINO's C++ trace: its last line says what was wrong
            if not os.path.exists(weights):
                raise InputError(f"{xml} needs its weights file {weights}, which does not exist; keep the .bin "
                                 "next to the .xml (export_openvino writes both)") from e
            raise InputError(f"{xml} (with {os.path.basename(weights)}) is corrupt or truncated ({error_line(e)}); "
                             "export it again with export_openvino") from e

    # ----------------------------------------------------------------------------------------- auto
    def _pick(self, candidates, timing_fn, repeats) -> str:
        example = self._need_example('backend="auto"')
        candidates = list(candidates or available_backends())
        unknown = [c for c in candidates if c not in BACKENDS]
        if unknown:
            raise ConfigError(f"unknown backend(s) {unknown}; choose from {BACKENDS}")
        runners = {}
        for name in candidates:
            try:
                runners[name] = self._build(name)
            except InputError:  # a corrupt model file is not a backend that cannot take the model
                raise
            except Exception as e:  # a backend that cannot take this model is skipped, and the reason logged
                logger.warning("backend %s skipped: %s", name, e)
        if not runners:
            raise BackendUnavailableError(f"none of the backends {candidates} can run this model")
        for name, run in runners.items():
            self._run, self.backend = run, name
            workload = (lambda: timing_fn(self)) if timing_fn else (lambda: run(example))
            self.timings[name] = time_call(workload, repeats=repeats, warmup=1)["median_s"]
            gc.collect()
            time.sleep(0.5)  # let the previous runtime's spinning threads go idle before timing the next
        best = min(self.timings, key=self.timings.get)
        self._run = runners[best]
        logger.info("backend=auto picked %s (%s)", best,
                    ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in sorted(self.timings.items(), key=lambda kv: kv[1])))
        return best

    def __call__(self, x):
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        expected = self._inputs.get(self.backend)
        why = input_mismatch(expected, tuple(x.shape)) if expected is not None else ""
        if why and self.backend in FILE_SHAPED:
            raise InputError(self._wrong_input(x, why, expected))
        try:
            return self._run(x)
        except Exception as e:
            if why:  # the torch backends know the expected input from example_input or the first layer: a guess
                raise InputError(self._wrong_input(x, why, expected)) from e
            raise

    def _wrong_input(self, x: torch.Tensor, why: str, expected) -> str:
        return (f"Predictor ({self.backend}, {self._source}) cannot run on an input of shape {tuple(x.shape)}: the "
                f"model {why}; pass a tensor of shape {shape_text(expected)}")

    def __repr__(self) -> str:
        return f"Predictor(backend={self.backend!r}, timings={ {k: round(v, 4) for k, v in self.timings.items()} })"
