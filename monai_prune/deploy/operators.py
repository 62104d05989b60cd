"""MONAI Deploy App SDK operators for compressed bundles.

* :class:`CompressedBundleInferenceOperator`: the stock ``MonaiBundleInferenceOperator`` (the bundle's own
  ``inference`` preprocessing, inferer and postprocessing, ``LoadImage``/``SaveImage`` dropped), but the network is a
  verified model file of a compressed bundle run by TorchScript, ONNX Runtime or OpenVINO, fp32 or int8
  (:func:`monai_prune.deploy.models.select_model`); the stock operator keeps working on the same bundle's
  ``model.ts``. For a classification bundle it emits ``{"class_index", "class_name", "probabilities"}``.
* :class:`ClassificationResultOperator`: such a result -> ``result.json`` in the output folder and the text the stock
  ``DICOMTextSRWriterOperator`` writes into a DICOM SR.
* :class:`StageTimer` + :func:`timed`: seconds spent in every operator's ``compute`` (and the inference
  operator's pre-processing, network, post-processing), logged per stage and written with the results.
* :class:`CompressedBundleApp`: the base of the apps in ``apps/``.

The classes live in :mod:`.inference_operator`, :mod:`.output_operators` and :mod:`.stage_timer`; every one of them
is importable from here, where the apps import them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, Optional

from holoscan.conditions import CountCondition
from monai.deploy.core import Application
from monai.deploy.operators import (DICOMDataLoaderOperator, DICOMSegmentationWriterOperator,  # noqa: F401
                                    DICOMSeriesSelectorOperator, DICOMSeriesToVolumeOperator, ModelInfo,
                                    MonaiBundleInferenceOperator)

from ..utils import atomic_write_text  # noqa: F401
from .inference_operator import (CompressedBundleInferenceOperator, StageTimedBundleInferenceOperator,  # noqa: F401
                                 cached_runtime, on_input_grid)
from .models import ModelChoice, select_model  # noqa: F401
from .output_operators import (SOURCE_TYPE2_ATTRIBUTES, ClassificationResultOperator,  # noqa: F401
                               NiftiSegmentationWriterOperator, SegmentationWriterOperator)
from .stage_timer import StageTimer, timed


class CompressedBundleApp(Application):
    """Base of the apps in ``apps/``: the run options, verified model and stage timer from the runner
    (:func:`monai_prune.deploy.runner.run_app`), and the stock DICOM input chain."""

    def __init__(self, argv=None, run_options=None, model_choice: Optional[ModelChoice] = None,
                 stage_timer: Optional[StageTimer] = None):
        self.run_options, self.model_choice, self.stage_timer = run_options, model_choice, stage_timer
        super().__init__(*([argv] if argv is not None else []))  # default: sys.argv, as MONAI Deploy apps use

    def model_info(self) -> ModelInfo:
        """The model for the DICOM writers' Contributing Equipment: name, version, a UID from its sha256."""
        choice = self.model_choice
        return ModelInfo("monai-prune", choice.name[:64], choice.version, choice.dicom_uid)

    def dicom_input(self, context, rules: Dict[str, Any]):
        """DICOMDataLoader -> DICOMSeriesSelector -> DICOMSeriesToVolume, timed and connected; returns
        ``(selector, volume)`` for the app to connect onwards.

        The selector takes exactly the series the runner's pre-flight check chose and recorded
        (``run_options.selected_series_uid``, see :mod:`monai_prune.deploy.preflight`): ``rules`` only name the
        selection; left to itself, SDK 4.0 takes the first matching series of each study, whatever its size.
        """
        uid = getattr(self.run_options, "selected_series_uid", None)
        if uid:
            rules = copy.deepcopy(rules)
            for selection in rules["selections"]:
                selection["conditions"]["SeriesInstanceUID"] = uid  # compared for equality first by the SDK
        loader = timed(DICOMDataLoaderOperator)(self, CountCondition(self, 1), input_folder=Path(context.input_path),
                                                name="dicom_loader")
        selector = timed(DICOMSeriesSelectorOperator)(self, rules=json.dumps(rules), name="series_selector")
        volume = timed(DICOMSeriesToVolumeOperator)(self, name="series_to_volume")
        for op in (loader, selector, volume):
            op.stage_timer = self.stage_timer
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, volume, {("study_selected_series_list", "study_selected_series_list")})
        return selector, volume
