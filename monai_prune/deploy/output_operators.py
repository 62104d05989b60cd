"""The output operators: the DICOM SEG writer made safe for de-identified studies
(:class:`SegmentationWriterOperator`), a classification result to ``result.json`` and SR text
(:class:`ClassificationResultOperator`) and a NIfTI copy of the segmentation (:class:`NiftiSegmentationWriterOperator`).
Importable from :mod:`monai_prune.deploy.operators`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from monai.deploy.core import Operator, OperatorSpec
from monai.deploy.operators import DICOMSegmentationWriterOperator

from ..utils import atomic_write_text
from .inference_operator import CompressedBundleInferenceOperator

logger = logging.getLogger(__name__)


# Type 2 attributes the SEG copies from its source images (highdicom reads them as attributes): de-identification
# profiles (DICOM PS3.15 Basic Profile) empty or remove them, which made the SDK's writer crash after inference.
SOURCE_TYPE2_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate",
                           "StudyTime", "AccessionNumber", "ReferringPhysicianName")


class SegmentationWriterOperator(DICOMSegmentationWriterOperator):
    """The SDK's DICOM SEG writer, made safe for de-identified studies and given a SeriesDescription.

    Attributes of :data:`SOURCE_TYPE2_ATTRIBUTES` that the source slices lack are written empty, as the standard
    allows for type 2 attributes (in memory only: the input files are not touched).

    Args:
        series_description: the SEG's SeriesDescription (e.g. "spleen_ct (compressed) AI segmentation"); cut to
            the 64 characters DICOM allows.
        omit_empty_frames: ``"auto"`` (default): frames only for the slices that hold a segment (a 140-slice CT
            with an organ on 40 slices gets 40 frames, which highdicom encodes several times faster), and every
            frame when nothing was segmented (a valid, empty SEG); True/False as the SDK's writer.
    """

    def __init__(self, fragment, *args, series_description: str, omit_empty_frames: Any = "auto", **kwargs) -> None:
        tags = dict(kwargs.pop("custom_tags", None) or {})
        tags.setdefault("SeriesDescription", series_description[:64])
        self._omit_policy = omit_empty_frames
        super().__init__(fragment, *args, custom_tags=tags, omit_empty_frames=omit_empty_frames is not False,
                         **kwargs)

    def create_dicom_seg(self, image, dicom_series, output_dir):
        if self._omit_policy == "auto":  # only the slices that hold a segment, unless none does (an empty SEG)
            self._omit_empty_frames = bool(np.any(np.asarray(image)))
        for instance in dicom_series.get_sop_instances():
            ds = instance.get_native_sop_instance()
            for keyword in SOURCE_TYPE2_ATTRIBUTES:
                if keyword not in ds:
                    setattr(ds, keyword, "")
        return super().create_dicom_seg(image, dicom_series, output_dir)


class ClassificationResultOperator(Operator):
    """A classification result -> ``result.json`` (with the model record and stage times so far) + SR text.

    Named input ``result`` (from :class:`CompressedBundleInferenceOperator`), named output ``text``.
    """

    def __init__(self, fragment, *args, output_folder: Path, model_op: CompressedBundleInferenceOperator,
                 **kwargs) -> None:
        self.output_folder = Path(output_folder)
        self.model_op = model_op
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("result")
        spec.output("text")

    def compute(self, op_input, op_output, context):
        result = dict(op_input.receive("result"))
        choice = self.model_op.model_choice
        result["model"] = choice.to_dict() if choice is not None else None
        self.output_folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output_folder / "result.json", json.dumps(result, indent=2))
        probabilities = ", ".join(f"{k}: {v:.3f}" for k, v in result["probabilities"].items())
        model = f"{choice.name} {choice.version} ({choice.backend} {choice.precision})" if choice else "unknown model"
        op_output.emit(f"{result['class_name']} (probabilities {probabilities}; model {model})", "text")


class NiftiSegmentationWriterOperator(Operator):
    """The segmentation ``Image`` (as the bundle operator emits it for the DICOM SEG writer: ``(D, H, W)`` uint8 with
    the input's metadata) -> ``segmentation.nii.gz`` on the input volume's grid (RAS affine), for inspection."""

    def __init__(self, fragment, *args, output_folder: Path, filename: str = "segmentation.nii.gz", **kwargs) -> None:
        self.output_folder, self.filename = Path(output_folder), filename
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("seg_image")

    def compute(self, op_input, op_output, context):
        import nibabel as nib
        import numpy as np

        image = op_input.receive("seg_image")
        array = np.swapaxes(np.asarray(image.asnumpy()), 0, -1)  # (D, H, W) -> (W, H, D), the volume's index order
        meta = image.metadata()
        affine = meta.get("original_affine", meta.get("affine"))
        affine = np.asarray(affine.cpu() if hasattr(affine, "cpu") else affine, dtype=np.float64) \
            if affine is not None else np.eye(4)
        self.output_folder.mkdir(parents=True, exist_ok=True)
        target = self.output_folder / self.filename
        tmp = self.output_folder / f".{self.filename}.tmp.nii.gz"
        nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), str(tmp))
        tmp.replace(target)
        logger.info("wrote %s %s", target.name, array.shape)
