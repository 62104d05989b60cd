"""DICOM for the deploy apps: synthetic CT/MR series and X-rays, reading a DICOM SEG back, input pre-flight checks.

Axis conventions (checked in ``tests/test_dicom.py`` unless marked "from the SDK source")
----------------------------------------------------------------------------------------
A volume is a numpy array indexed ``volume[x, y, z]``, the layout of ``monai.data.create_test_image_3d`` and of
MONAI's readers. :func:`write_ct_series` stores it in the DICOM patient frame (LPS) with
``ImageOrientationPatient = [1, 0, 0, 0, 1, 0]``:

* slice file ``k`` holds ``volume[:, :, k]``, at ``ImagePositionPatient = origin + (0, 0, k * spacing[2])``: slices
  go towards +z (patient superior) as ``k`` grows, and ``InstanceNumber = k + 1``;
* within a slice, DICOM row ``r`` and column ``c`` hold ``volume[c, r, k]`` (``pixel_array == volume[:, :, k].T``):
  the x axis runs along a row (``Columns = volume.shape[0]``), the y axis down the columns
  (``Rows = volume.shape[1]``), so ``PixelSpacing = [spacing[1], spacing[0]]`` (row spacing first, as DICOM has it);
* HU values are stored as ``round((hu - RescaleIntercept) / RescaleSlope)``.

Readers of such a series:

* ``monai.transforms.LoadImage(reader="PydicomReader")`` on the folder gives back ``volume`` itself, ``(x, y, z)``,
  in HU; its affine is RAS (x and y negated), as for any DICOM. (ITKReader uses the same layout; it is not
  installed here, so it is not tested.)
* The MONAI Deploy App SDK (``DICOMDataLoaderOperator`` -> ``DICOMSeriesSelectorOperator`` ->
  ``DICOMSeriesToVolumeOperator``) builds an ``Image`` whose ``asnumpy()`` is ``(z, y, x)`` ("DHW", slices sorted
  along the slice normal): ``sdk_array == volume.transpose(2, 1, 0)``. The SDK's SEG writer takes a ``(z, y, x)``
  label array in the same slice order. The SDK's bundle inference operator swaps axes 0 and 2 before the network (so
  the network sees ``(x, y, z)`` again) and back after it (from the SDK source). The SDK 4.0
  ``nifti_affine_transform`` pairs PixelSpacing[0] (the y spacing) with the x axis, which is only right for square
  pixels (seen with 0.8 x 0.7 mm pixels); the voxel data do not depend on it.
* :func:`read_segmentation` turns a DICOM SEG made for such a series back into a ``(x, y, z)`` label array that lines
  up with ``volume``, matching SEG frames to slices by the referenced SOP Instance UIDs.

2D images (:func:`write_xray`) follow the same rule: ``image[x, y]``, ``pixel_array == image.T``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import pydicom
from monai.utils import optional_import
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.misc import is_dicom
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from ..errors import InputError
from ..fidelity.metrics import dice as one_dice
from .preflight import check_dicom_input, position_on_normal

hd, _ = optional_import("highdicom")

logger = logging.getLogger(__name__)

__all__ = ["check_dicom_input", "dice", "read_segmentation", "segment_descriptions", "write_ct_series", "write_xray"]

VOLUME_SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}
XRAY_SOP_CLASSES = {"DX": DigitalXRayImageStorageForPresentation, "CR": ComputedRadiographyImageStorage}
# A fixed date and time keep files written with the same seed byte-identical.
SYNTHETIC_DATE, SYNTHETIC_TIME = "20240101", "120000"


def _uid_factory(seed: Optional[int], *context) -> Callable[[str], str]:
    """``uid(name)``: random UIDs for ``seed=None``, otherwise UIDs that depend only on the seed and ``context``."""
    if seed is None:
        return lambda name: generate_uid()
    base = [str(seed), *map(str, context)]
    return lambda name: generate_uid(entropy_srcs=[*base, name])


def _identity(ds: Dataset, sop_class: str, sop_uid: str, modality: str, study_uid: str, series_uid: str,
              patient_id: str, patient_name: str, series_description: str, series_number: int) -> None:
    """SOP Common, Patient, General Study, General Series and General Equipment attributes."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", "O"
    ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = study_uid, "1", ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = SYNTHETIC_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = SYNTHETIC_TIME
    ds.ReferringPhysicianName, ds.StudyDescription = "", "synthetic study"
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = modality, series_uid, series_number
    ds.SeriesDescription = series_description
    ds.Manufacturer, ds.ManufacturerModelName = "monai-prune", "synthetic"
    ds.SoftwareVersions, ds.DeviceSerialNumber = "monai-prune", "0000"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BurnedInAnnotation = "NO"


def _set_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    """Store a 2D integer array (rows, columns) as uncompressed 16-bit pixel data."""
    signed = pixels.dtype == np.int16
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
    ds.PixelData = np.ascontiguousarray(pixels).astype("<i2" if signed else "<u2").tobytes()


def _stored_values(hu: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """HU -> stored integers, as uint16 when all are non-negative, else int16."""
    if not np.all(np.isfinite(hu)):
        raise InputError("The volume holds NaN or infinite values; DICOM pixels must be finite numbers.")
    raw = np.rint((hu.astype(np.float64) - intercept) / slope)
    if raw.size and raw.min() >= 0 and raw.max() <= np.iinfo(np.uint16).max:
        return raw.astype(np.uint16)
    if raw.size and raw.min() >= np.iinfo(np.int16).min and raw.max() <= np.iinfo(np.int16).max:
        return raw.astype(np.int16)
    raise InputError(f"Values from {hu.min():g} to {hu.max():g} do not fit 16-bit pixels with RescaleSlope={slope:g} "
                     f"and RescaleIntercept={intercept:g}; scale the volume to Hounsfield units or change the slope.")


def write_ct_series(volume, out_dir, spacing=(1.0, 1.0, 2.0), origin=(0, 0, 0), study_uid=None,
                    patient_id="ANON0001", patient_name="Anonymous^Synthetic", series_description="synthetic CT",
                    modality="CT", rescale_slope=1.0, rescale_intercept=-1024.0, series_number=1,
                    seed=0) -> List[str]:
    """Write a ``(x, y, z)`` volume of Hounsfield units as a CT (or MR) series, one file per slice.

    See the module docstring for how the array axes map onto DICOM rows, columns and slices.

    Args:
        volume: 3D array ``(x, y, z)``, e.g. ``create_test_image_3d`` output scaled to HU.
        out_dir: folder for ``slice_0000.dcm``, ``slice_0001.dcm``, ... (created; one series per folder).
        spacing: voxel size in mm along x, y, z.
        origin: patient position (mm, LPS) of voxel ``[0, 0, 0]``.
        study_uid: StudyInstanceUID to share with other series; a new one when None.
        modality: ``"CT"`` (CT Image Storage) or ``"MR"`` (MR Image Storage).
        rescale_slope, rescale_intercept: stored value = round((HU - intercept) / slope).
        seed: UIDs are derived from it, the arguments and the volume, so the same call writes the same files;
            None gives random UIDs.

    Returns:
        The sorted paths of the written files.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise InputError(f"write_ct_series expects a 3D (x, y, z) array, got shape {volume.shape}.")
    modality = str(modality).upper()
    if modality not in VOLUME_SOP_CLASSES:
        raise InputError(f"Modality {modality!r} is not supported; use one of {sorted(VOLUME_SOP_CLASSES)}.")
    spacing, origin = [float(s) for s in spacing], [float(o) for o in origin]
    if len(spacing) != 3 or min(spacing) <= 0 or len(origin) != 3:
        raise InputError(f"spacing must be 3 positive numbers and origin 3 numbers, got {spacing} and {origin}.")
    if float(rescale_slope) == 0:
        raise InputError("rescale_slope must not be 0.")
    stored = _stored_values(volume, float(rescale_slope), float(rescale_intercept))
    digest = hashlib.sha256(stored.tobytes()).hexdigest()
    uid = _uid_factory(seed, digest, volume.shape, spacing, origin, study_uid, patient_id, patient_name, modality,
                       series_number, series_description)
    study_uid = study_uid or uid("study")
    series_uid, frame_uid = uid("series"), uid("frame")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(volume.shape[2]):
        ds = Dataset()
        _identity(ds, VOLUME_SOP_CLASSES[modality], uid(f"sop{k}"), modality, study_uid, series_uid,
                  patient_id, patient_name, series_description, series_number)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition, ds.BodyPartExamined = "HFS", "ABDOMEN"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.AcquisitionNumber, ds.InstanceNumber = 1, k + 1
        position = [origin[0], origin[1], origin[2] + k * spacing[2]]
        ds.ImagePositionPatient = [f"{p:.6g}" for p in position]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = f"{position[2]:.6g}"
        ds.PixelSpacing = [f"{spacing[1]:.6g}", f"{spacing[0]:.6g}"]
        ds.SliceThickness = f"{spacing[2]:.6g}"
        ds.RescaleIntercept, ds.RescaleSlope = f"{rescale_intercept:g}", f"{rescale_slope:g}"
        if modality == "CT":
            ds.RescaleType, ds.KVP, ds.ConvolutionKernel = "HU", "120", "STANDARD"
        else:  # type 1/2 attributes of the MR Image module
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
            ds.MRAcquisitionType, ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "2D", "500", "15", "1"
            ds.MagneticFieldStrength = "1.5"
        _set_pixels(ds, stored[:, :, k].T)
        path = out_dir / f"slice_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
    return sorted(paths)


def write_xray(image, path, modality="DX", pixel_spacing=(0.2, 0.2), study_uid=None, patient_id="ANON0001",
               patient_name="Anonymous^Synthetic", series_description="synthetic X-ray", series_number=1,
               seed=0) -> str:
    """Write a 2D ``(x, y)`` array as one Digital X-Ray (For Presentation) or CR image, uint16 MONOCHROME2.

    ``pixel_array == image.T`` (x along a row), ``ImagerPixelSpacing = [pixel_spacing[1], pixel_spacing[0]]``.
    Values are rounded and must lie in [0, 65535]; scale ``create_test_image_2d`` output (0..1) first.
    """
    image = np.asarray(image)
    modality = str(modality).upper()
    if image.ndim != 2 or min(image.shape) < 1:
        raise InputError(f"write_xray expects a 2D (x, y) array, got shape {image.shape}.")
    if modality not in XRAY_SOP_CLASSES:
        raise InputError(f"Modality {modality!r} is not supported; use one of {sorted(XRAY_SOP_CLASSES)}.")
    if np.all(np.isfinite(image)) and (image.min() < 0 or image.max() > np.iinfo(np.uint16).max):
        raise InputError(f"X-ray pixels must lie in [0, 65535], got {image.min():g} to {image.max():g}.")
    stored = _stored_values(image, 1.0, 0.0).astype(np.uint16)
    uid = _uid_factory(seed, hashlib.sha256(stored.tobytes()).hexdigest(), image.shape, pixel_spacing, study_uid,
                       patient_id, patient_name, modality, series_number, series_description)
    ds = Dataset()
    _identity(ds, XRAY_SOP_CLASSES[modality], uid("sop"), modality, study_uid or uid("study"), uid("series"),
              patient_id, patient_name, series_description, series_number)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber, ds.AcquisitionNumber = 1, 1
    ds.BodyPartExamined, ds.ViewPosition, ds.PatientOrientation = "CHEST", "PA", ["L", "F"]
    ds.ImagerPixelSpacing = [f"{pixel_spacing[1]:.6g}", f"{pixel_spacing[0]:.6g}"]
    if modality == "DX":
        ds.PresentationIntentType, ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = (
            "FOR PRESENTATION", "LIN", 1)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
        ds.LossyImageCompression = "00"
    _set_pixels(ds, stored.T)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def read_segmentation(seg_path, series_dir) -> np.ndarray:
    """Label array ``(x, y, z)``, laid out like the volume given to :func:`write_ct_series`, from a DICOM SEG.

    Each SEG frame is placed on the slice of ``series_dir`` whose SOP Instance UID it references (slices ordered
    along their normal, as the writer and the Deploy SDK order them); the value is the segment number, 0 where no
    segment is. Frames the SEG left out (empty ones) read as 0.
    """
    seg = hd.seg.segread(str(seg_path))
    referenced = {item.SeriesInstanceUID for item in seg.ReferencedSeriesSequence}
    sources = [ds for ds in _read_headers(Path(series_dir))
               if ds.get("SeriesInstanceUID") in referenced and "ImagePositionPatient" in ds]
    if not sources:
        raise InputError(f"No slice of the series the SEG {Path(seg_path).name} refers to is in {series_dir}; "
                         "pass the folder of the segmented series.")
    wanted = {item.ReferencedSOPInstanceUID for series in seg.ReferencedSeriesSequence
              for item in series.get("ReferencedInstanceSequence", [])}
    missing = wanted - {ds.SOPInstanceUID for ds in sources}
    if missing:
        raise InputError(f"{len(missing)} of the {len(wanted)} slices the SEG {Path(seg_path).name} refers to are not "
                         f"in {series_dir}; pass the folder holding the complete segmented series.")
    sources.sort(key=position_on_normal)
    labels = seg.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in sources], combine_segments=True, assert_missing_frames_are_empty=True)
    dtype = np.uint8 if max(seg.segment_numbers, default=0) < 256 else np.uint16
    return np.ascontiguousarray(np.transpose(labels, (2, 1, 0))).astype(dtype)


def segment_descriptions(seg_path) -> List[dict]:
    """Segment number, label, property type and the algorithm (type, name, version) of each segment of a SEG."""
    ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
    out = []
    for item in ds.get("SegmentSequence", []):
        algorithm = item.get("SegmentationAlgorithmIdentificationSequence") or [Dataset()]
        prop = item.get("SegmentedPropertyTypeCodeSequence") or [Dataset()]
        out.append({
            "number": int(item.SegmentNumber),
            "label": str(item.get("SegmentLabel", "")),
            "property_type": str(prop[0].get("CodeMeaning", "")),
            "algorithm_type": str(item.get("SegmentAlgorithmType", "")),
            "algorithm_name": str(item.get("SegmentAlgorithmName", algorithm[0].get("AlgorithmName", ""))),
            "algorithm_version": str(algorithm[0].get("AlgorithmVersion", "")),
        })
    return out


def _read_headers(folder: Path) -> List[Dataset]:
    """Headers of the readable DICOM files under ``folder`` (recursively); anything else is skipped."""
    headers = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            if is_dicom(path):
                headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as err:  # unreadable files are check_dicom_input's business, not this reader's
            logger.warning("skipped %s: %s", path.name, err)
    return headers


def dice(a, b, label=1) -> float:
    """Dice overlap of ``label`` in two label arrays of one shape (1.0 when neither has it): the one Dice,
    :func:`monai_prune.fidelity.metrics.dice`, with the agreement rule for an absent class."""
    return one_dice(np.asarray(a), np.asarray(b), label=label, empty=1.0)
