"""The inference operators: :class:`CompressedBundleInferenceOperator` (a compressed bundle's model through our
runtimes inside the stock ``MonaiBundleInferenceOperator``), the stock operator with its stages timed
(:class:`StageTimedBundleInferenceOperator`), the runtime cache of a resident app (:func:`cached_runtime`) and the
check that a segmentation is on the input series' grid (:func:`on_input_grid`). Importable from
:mod:`monai_prune.deploy.operators`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from monai.deploy.operators import MonaiBundleInferenceOperator

from .models import ModelChoice, select_model
from .stage_timer import StageTimer

logger = logging.getLogger(__name__)


_RUNTIMES: Dict[tuple, Any] = {}


def cached_runtime(choice: ModelChoice, num_threads: Optional[int], device: str):
    """The loaded runtime for a verified model file, loaded once per process: a resident app (``monai-prune serve``)
    pays model loading and compilation (OpenVINO compiles on load) for its first study only. Keyed by the file's
    sha256 (verified before every study), backend, threads and device, so a changed file is loaded anew."""
    from ..runtime import Predictor

    key = (choice.path, choice.sha256, choice.backend, num_threads, device)
    if key not in _RUNTIMES:
        _RUNTIMES[key] = Predictor(choice.path, backend=choice.backend, num_threads=num_threads, device=device)
    else:
        logger.info("model %s already loaded on %s in this process: reused", choice.name, choice.backend)
    return _RUNTIMES[key]


class _StagesMixin:
    """Seconds of the bundle operator's pre-processing, network (inferer) and post-processing, into
    ``stage_timer`` as ``<operator name>.<stage>``; behaviour unchanged."""

    stage_timer: Optional[StageTimer] = None

    def _timed(self, stage: str, fn, *args, **kwargs):
        if self.stage_timer is None:
            return fn(*args, **kwargs)
        return self.stage_timer.measure(f"{self.name}.{stage}", fn, *args, **kwargs)


class StageTimedBundleInferenceOperator(_StagesMixin, MonaiBundleInferenceOperator):
    """The SDK's own ``MonaiBundleInferenceOperator``, unchanged, with its stages timed (the deploy benchmark's
    dense baseline and ``--operator stock``)."""

    def __init__(self, fragment, *args, stage_timer: Optional[StageTimer] = None, **kwargs) -> None:
        self.stage_timer = stage_timer
        super().__init__(fragment, *args, **kwargs)

    def pre_process(self, data: Any, *args, **kwargs):
        return self._timed("preprocessing", super().pre_process, data, *args, **kwargs)

    def predict(self, data: Any, *args, **kwargs):
        return self._timed("network", super().predict, data, *args, **kwargs)

    def post_process(self, data: Any, *args, **kwargs):
        return self._timed("postprocessing", super().post_process, data, *args, **kwargs)


class CompressedBundleInferenceOperator(_StagesMixin, MonaiBundleInferenceOperator):
    """Run a compressed bundle's model through our backends, with the bundle's own pre/post-processing and inferer.

    Takes the stock operator's arguments (``app_context``, ``input_mapping``, ``output_mapping``, ``bundle_path``,
    ``bundle_config_names`` ...) plus:

    Args:
        backend: ``"auto"``, ``"torchscript"``, ``"onnxruntime"`` or ``"openvino"``.
        precision: ``"auto"``, ``"fp32"`` or ``"int8"``.
        verify: check the model files' sha256 from ``configs/metadata.json`` before loading (default True).
        num_threads: intra-op threads for ONNX Runtime / OpenVINO.
        stage_timer: a :class:`StageTimer` for pre-processing / network / post-processing seconds.
        model_choice: an already verified :class:`~monai_prune.deploy.models.ModelChoice` (the apps' runner checks
            the model before the graph starts); then backend/precision/verify are not consulted.
        fast_postprocessing: when the bundle's postprocessing is the model zoo's ``[Activationsd] -> Invertd ->
            AsDiscreted`` (softmax + argmax, sigmoid + threshold, or none) and the network's grid is axis-aligned
            with the input's (``Orientationd``/``Spacingd``), compute the same labels on the input grid with
            separable interpolation (:func:`monai_prune.deploy.label_inversion.invert_labels`) instead of
            ``Invertd``'s full resampling of every float channel (default True; False runs the bundle's own).

    ``bundle_path`` is the compressed bundle folder (or a file in its ``models/``); without it, the app's model
    path (``-m``) is used. ``model_choice`` tells, after the first ``compute``, which file and backend ran.
    """

    def __init__(self, fragment, *args, backend: str = "auto", precision: str = "auto", verify: bool = True,
                 num_threads: Optional[int] = None, stage_timer: Optional[StageTimer] = None,
                 model_choice: Optional[ModelChoice] = None, fast_postprocessing: bool = True, **kwargs) -> None:
        self._backend, self._precision, self._verify = backend, precision, verify
        self._fast_postprocessing = fast_postprocessing
        self.postprocessing_used: Optional[str] = None
        self._num_threads = num_threads
        self.stage_timer = stage_timer
        self.model_choice: Optional[ModelChoice] = model_choice
        self._runner = None
        self._probabilities: Optional[torch.Tensor] = None
        super().__init__(fragment, *args, **kwargs)

    def _prepare(self) -> None:
        """Verify and load the model once, before the stock compute touches any file."""
        if self._runner is not None:
            return
        choice = self.model_choice
        if choice is None:
            path = self.bundle_path or (Path(self.app_context.model_path) if self.app_context.model_path else None)
            if path is None:
                raise IOError("no compressed bundle: pass bundle_path= or run the app with -m <bundle folder>")
            choice = select_model(str(path), self._backend, self._precision, verify=self._verify)
        if choice.bundle is not None:
            self.bundle_path = Path(choice.bundle)  # configs are read from the folder, not from inside model.ts
        elif choice.path.endswith(".ts"):
            self.bundle_path = Path(choice.path)  # a lone model.ts: configs embedded under extra/ (ckpt_export)
        self._runner = cached_runtime(choice, self._num_threads,
                                      "cpu" if choice.backend != "torchscript" or not torch.cuda.is_available()
                                      else "cuda")
        self.model_choice = choice
        logger.info("model %s %s (sha256 %s...) on %s %s: %s", choice.name, choice.version, choice.sha256[:12],
                    choice.backend, choice.precision, choice.reason)

    def compute(self, op_input, op_output, context):
        self._prepare()
        super().compute(op_input, op_output, context)

    def pre_process(self, data: Any, *args, **kwargs):
        image = next(iter(data.values())) if isinstance(data, dict) and data else None
        if getattr(image, "affine", None) is not None and image.ndim >= 3:  # the input volume's grid, for the check
            self._input_grid = (np.asarray(image.affine, dtype=np.float64), tuple(image.shape[-3:]))
        return self._timed("preprocessing", super().pre_process, data, *args, **kwargs)

    def predict(self, data: Any, *args, **kwargs):
        """The bundle's inferer (e.g. sliding window) around our runtime instead of ``torch.jit.load(model.ts)``."""
        with torch.no_grad():
            return self._timed("network", self._inferer, inputs=data, network=self._runner, *args, **kwargs)

    def post_process(self, data: Any, *args, **kwargs):
        outputs = self._timed("postprocessing", self._post_process, data, *args, **kwargs)
        grid = getattr(self, "_input_grid", None)
        if grid is not None and isinstance(outputs, dict):
            for name, conf in self._outputs.items():
                pred = outputs.get(name)
                if conf.get("type") == "image" and getattr(pred, "affine", None) is not None and pred.ndim == 4:
                    outputs[name] = on_input_grid(pred, *grid)
        if isinstance(outputs, dict) and "probabilities" in outputs:  # e.g. CopyItemsd(pred -> probabilities)
            self._probabilities = torch.as_tensor(outputs["probabilities"]).detach().cpu().reshape(-1)
        return outputs

    def _post_process(self, data: Any, *args, **kwargs):
        fast = self._fast_labels(data, kwargs.get(self.kw_preprocessed_inputs, {})) \
            if self._fast_postprocessing else None
        if fast is not None:
            return fast
        self._note("bundle")
        return super().post_process(data, *args, **kwargs)

    def _note(self, how: str) -> None:
        if self.postprocessing_used != how:
            logger.info("postprocessing: %s", how)
        self.postprocessing_used = how
        if self.stage_timer is not None:
            self.stage_timer.notes[f"{self.name}.postprocessing"] = how

    def _fast_labels(self, data: Any, inputs: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The bundle's ``[Activationsd] -> Invertd -> AsDiscreted`` output computed on the input grid directly, or
        None (then the bundle's own postprocessing runs), see ``fast_postprocessing``."""
        from monai.data import MetaTensor
        from monai.transforms import Compose

        from .label_inversion import fast_pattern, invert_labels

        grid = getattr(self, "_input_grid", None)
        names = list(self._outputs)
        if grid is None or len(names) != 1 or not isinstance(data, torch.Tensor) or data.ndim != 4 \
                or not isinstance(self._postproc, Compose):
            return None
        found = fast_pattern(self._postproc.transforms, key=names[0])
        image = next(iter(inputs.values()), None) if inputs else None
        if found is None or getattr(image, "affine", None) is None:
            return None
        pattern, invert, discretise = found
        if list(invert.orig_keys) != [next(iter(inputs))]:
            return None
        labels = invert_labels(data, pattern, discretise.threshold[0], bool(invert.nearest_interp[0]),
                               np.asarray(image.affine, dtype=np.float64), grid[0], grid[1])
        if labels is None:
            return None
        self._note(f"fast ({pattern}, {'nearest' if invert.nearest_interp[0] else 'trilinear'} on the input grid)")
        return {names[0]: MetaTensor(torch.from_numpy(labels), affine=torch.as_tensor(grid[0]))}

    def _receive_input(self, name: str, op_input, context):
        """As the stock operator, plus: a 2D bundle fed a one-slice DICOM series (an X-ray through
        ``DICOMSeriesToVolumeOperator`` is ``(W, H, 1)`` after the stock conversion) gets the 2D image."""
        import numpy as np

        value, meta = super()._receive_input(name, op_input, context)
        spatial = self._inputs.get(name, {}).get("spatial_shape") or []
        if len(spatial) == 2 and getattr(value, "ndim", 0) == 3 and value.shape[-1] == 1:
            value = value[..., 0]
            meta = dict(meta or {})
            meta["spatial_shape"] = np.asarray(value.shape)
            if "spacing" in meta:
                meta["spacing"] = np.asarray(meta["spacing"])[:2]
            for key in ("affine", "original_affine"):  # a 4x4 affine does not fit a 2D image; pixels are what count
                meta[key] = np.eye(3)
        return value, meta

    def _send_output(self, value: Any, name: str, metadata: Dict, op_output, context):
        conf = self._outputs[name]
        if conf.get("type") != "probabilities":
            return super()._send_output(value, name, metadata, op_output, context)
        names = conf.get("channel_def", {})
        index = int(torch.as_tensor(value).reshape(-1)[0]) if torch.as_tensor(value).numel() == 1 else \
            int(torch.as_tensor(value).reshape(-1).argmax())
        probabilities = self._probabilities if self._probabilities is not None else torch.as_tensor(value).reshape(-1)
        result = {"class_index": index, "class_name": names.get(str(index), str(index)),
                  "probabilities": {names.get(str(i), str(i)): float(p) for i, p in enumerate(probabilities)}}
        op_output.emit(result, name)


def on_input_grid(pred, input_affine: np.ndarray, input_shape: tuple):
    """A ``(C, x, y, z)`` segmentation with its affine, put back on the input volume's grid, or InputError.

    A bundle whose inference config reorients (``Orientationd`` to RAS) without inverting afterwards returns its
    labels in the reoriented layout; written as they are, they make a valid DICOM SEG mirrored in rows and columns.
    The output's affine is compared with the input's: equal, the output is returned as is; different by axis flips
    and permutations only, it is reoriented back exactly (labels are not interpolated) with a warning; otherwise
    (resampled and never inverted) the result is refused.
    """
    import nibabel.orientations as nio
    from monai.data import MetaTensor

    from ..errors import InputError

    affine = np.asarray(pred.affine.cpu() if hasattr(pred.affine, "cpu") else pred.affine, dtype=np.float64)
    spatial = tuple(pred.shape[1:])
    tolerance = 1e-3 * max(1.0, float(np.abs(input_affine[:3, :3]).max()))
    if spatial == tuple(input_shape) and np.allclose(affine, input_affine, atol=tolerance):
        return pred
    transform = nio.ornt_transform(nio.io_orientation(affine), nio.io_orientation(input_affine))
    array = np.asarray(pred.detach().cpu())
    back = np.stack([nio.apply_orientation(channel, transform) for channel in array])
    back_affine = affine @ nio.inv_ornt_aff(transform, spatial)
    if back.shape[1:] != tuple(input_shape) or not np.allclose(back_affine, input_affine, atol=tolerance):
        raise InputError(
            f"the bundle's output {spatial} is not on the input series' grid {tuple(input_shape)} (its affine "
            f"differs by more than axis flips): its inference config resamples or reorients the image without "
            "inverting it afterwards; add Invertd to the bundle's postprocessing. No SEG was written.")
    logger.warning("the bundle's output was reoriented (%s -> %s) and never inverted: put back on the input grid "
                   "(add Invertd to the bundle's postprocessing)", "".join(nio.aff2axcodes(affine)),
                   "".join(nio.aff2axcodes(input_affine)))
    restored = MetaTensor(torch.as_tensor(np.ascontiguousarray(back)), affine=torch.as_tensor(input_affine))
    return restored
