"""Pre-flight check of a DICOM input folder, and the one rule that chooses the series a deploy app segments.

Real exported studies hold more than one series: localizers and scouts, secondary captures ("Exam Summary", dose
reports), reformats, other studies of the same patient, structured reports. The series that is checked here is the
one the app's graph segments (the runner hands its SeriesInstanceUID to the SDK's series selector) and the one
``run.json`` records. The rule, in order:

1. only images of the wanted modality, in that modality's image storage SOP class (CT Image Storage for CT):
   secondary captures, non-image objects (no pixel data: SR, presentation states, KOS) are skipped;
2. localizers and scouts (``ImageType`` LOCALIZER or SCOUT) are skipped; for volumes, only axial series (slice
   normal within 30 degrees of the patient's head-feet axis);
3. ``series_uid`` (exact) or ``series_description`` (a case-insensitive regular expression) narrows the choice
   when given and must then match exactly one series;
4. of what is left, the series with the most slices whose slices are equally spaced; a larger series with missing or
   misplaced slices is passed over with a warning (and refused when no series is left).

Images of two patients in one input are refused: one run segments one patient's study. Messages name folders,
files and series descriptions, never a patient identifier or a UID (``<uid>`` stands in).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.misc import is_dicom
from pydicom.uid import UID, MediaStorageDirectoryStorage

from ..errors import InputError
from .transfer_syntax import check_decodable

logger = logging.getLogger(__name__)

# Modalities whose instances are single 2D images, not slices of a volume.
PROJECTION_MODALITIES = ("DX", "CR", "MG", "XA", "RF", "IO", "PX")
# The image storage SOP classes whose series a volume app can stack (name prefixes as pydicom spells them).
VOLUME_SOP_CLASS_NAMES = {"CT": ("CT Image Storage",), "MR": ("MR Image Storage",)}
SKIPPED_IMAGE_TYPES = {"LOCALIZER": "a localizer", "SCOUT": "a scout", "PROJECTION IMAGE": "a projection image (MIP)"}
# what scanners write in SeriesDescription for localizers when ImageType says only OTHER (seen in real MR exports)
LOCALIZER_DESCRIPTION = re.compile(r"\b(localizer|localiser|scout|pilot|topogram|surview|scanogram|survey)\b",
                                   re.IGNORECASE)
MAX_AXIAL_TILT_DEG = 30.0
# instance UIDs; the standard's own (1.2.840.10008.*: SOP classes, transfer syntaxes) identify no one and stay
UID_PATTERN = re.compile(r"(?<![\d.])(?!1\.2\.840\.10008\.)[0-2](?:\.\d+){4,}\b")


def redact_uids(text: str) -> str:
    """DICOM UIDs (study, series, instance) replaced by ``<uid>``: a Study Instance UID links a line to a patient.
    UIDs the standard defines (transfer syntaxes, SOP classes) are kept: they say what to install or convert."""
    return UID_PATTERN.sub("<uid>", text)


# ------------------------------------------------------------------------------------------------ files
def _expected_pixel_bytes(ds: Dataset) -> int:
    bits = int(ds.get("BitsAllocated", 16))
    values = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.get("NumberOfFrames", 1) or 1)
    return (values + 7) // 8 if bits == 1 else values * bits // 8


def _end_of_data(ds: Dataset) -> int:
    """File offset where the last top-level element of defined length ends (pydicom reads short values silently)."""
    end = 0
    for tag in ds.keys():  # tags, not elements: iterating the dataset would convert the raw elements
        raw = ds.get_item(tag)  # still the RawDataElement read from the file, unless already converted
        if getattr(raw, "value_tell", None) is not None and raw.length != 0xFFFFFFFF:  # undefined length
            end = max(end, raw.value_tell + raw.length)
    return end


def _damage(path: Path, ds: Dataset) -> Optional[str]:
    """What is wrong with a DICOM file that pydicom read without complaint, or None (an object without pixel data
    is not damaged: it is skipped as a non-image object)."""
    size = path.stat().st_size
    end = _end_of_data(ds)
    if end > size or 0 < size - end < 8:  # a value, or the header of the next element, cut short
        return f"it ends at byte {size}, inside an element"
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        return "it has no SOP Class or SOP Instance UID"
    if "PixelData" not in ds:
        return None
    try:
        expected = 0 if ds.file_meta.TransferSyntaxUID.is_compressed else _expected_pixel_bytes(ds)
    except (AttributeError, TypeError, ValueError) as err:
        return f"the attributes needed to decode its pixels are missing ({err})"
    if len(ds.PixelData) < expected:
        return f"it has {len(ds.PixelData)} bytes of pixel data, {expected} expected for {ds.Rows}x{ds.Columns} pixels"
    return None


def _sop_class_name(ds: Dataset) -> str:
    try:
        return UID(str(ds.SOPClassUID)).name
    except Exception:  # a private or malformed SOP class
        return "an unknown SOP class"


def _read_image(path: Path, folder: Path) -> Optional[Dataset]:
    """A checked DICOM image; None (logged) for non-DICOM files and DICOM objects without pixels; else InputError."""
    if not is_dicom(path):
        logger.warning("skipped %s in %s: not a DICOM file", path.relative_to(folder), folder)
        return None
    try:
        ds = pydicom.dcmread(path)
        if ds.file_meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
            logger.info("skipped %s in %s: a DICOMDIR", path.relative_to(folder), folder)
            return None
        problem = _damage(path, ds)
    except Exception as err:
        problem = redact_uids(f"{type(err).__name__}: {err}")
    if problem:
        raise InputError(f"DICOM file {path.name} in {folder} is truncated or corrupt: {problem}. "
                         "Re-export the series or remove the file.")
    if "PixelData" not in ds:
        logger.info("skipped %s in %s: a DICOM object without pixel data (%s)", path.relative_to(folder), folder,
                    _sop_class_name(ds))
        return None
    return ds


# ------------------------------------------------------------------------------------------------ geometry
def _slice_normal(ds: Dataset) -> np.ndarray:
    cosines = np.asarray(ds.ImageOrientationPatient, dtype=float)
    return np.cross(cosines[:3], cosines[3:])


def position_on_normal(ds: Dataset) -> float:
    """A slice's position (mm) along its normal: the order the SDK and the SEG writer stack slices in."""
    return float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), _slice_normal(ds)))


def _slice_spacing(series: List[Dataset], folder: Path, description: str) -> float:
    """The one spacing between the slices' positions along their normal; InputError if they disagree."""
    if any("ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds for ds in series):
        raise InputError(f"Series {description} in {folder} has slices without ImagePositionPatient or "
                         "ImageOrientationPatient; it cannot be stacked into a volume.")
    cosines = np.array([np.asarray(ds.ImageOrientationPatient, dtype=float) for ds in series])
    if np.abs(cosines - cosines[0]).max() > 1e-4:
        raise InputError(f"Slices of series {description} in {folder} have different orientations; "
                         "select a series of parallel slices.")
    steps = np.diff(sorted(position_on_normal(ds) for ds in series))
    median = float(np.median(steps))
    tolerance = max(0.01, 0.01 * median)
    if steps.min() < tolerance:
        raise InputError(f"Series {description} in {folder} has {int((steps < tolerance).sum())} slice(s) at the "
                         "same position as another; remove duplicate files.")
    if steps.max() - steps.min() > tolerance:
        raise InputError(f"Series {description} in {folder} has inconsistent slice spacing along the slice normal: "
                         f"from {steps.min():.4g} to {steps.max():.4g} mm (tolerance {tolerance:.2g} mm): slices are "
                         "missing or misplaced, or the series holds blocks of different spacing (e.g. 4 mm, then "
                         "7 mm), and one volume needs one slice step. Re-export the complete series, or each block "
                         "as a series of its own.")
    return median


# ------------------------------------------------------------------------------------------------ series
def _describe(items: List[Dataset]) -> str:
    """``'Abdomen 1.5mm' (series 3)``: how messages name a series (never by UID)."""
    first = items[0]
    text = str(first.get("SeriesDescription", "") or "").strip()
    number = first.get("SeriesNumber", None)
    label = repr(redact_uids(text)) if text else "without description"
    return f"{label} (series {number})" if number not in (None, "") else label


def _why_skipped(items: List[Dataset], wanted: set) -> Optional[str]:
    """Why a series is not one the app may segment (rules 1-2 of the module docstring), or None."""
    first = items[0]
    modality = str(first.get("Modality", "")).upper()
    if modality not in wanted:
        return f"modality {modality or '?'}"
    sop_name = _sop_class_name(first)
    if "Secondary Capture" in sop_name:
        return "a secondary capture"
    if modality in VOLUME_SOP_CLASS_NAMES and not sop_name.startswith(VOLUME_SOP_CLASS_NAMES[modality]):
        return f"{sop_name}, not {VOLUME_SOP_CLASS_NAMES[modality][0]}"
    image_type = [str(v).upper() for v in (first.get("ImageType") or [])]
    kind = next((why for t, why in SKIPPED_IMAGE_TYPES.items() if t in image_type), None)
    if kind:
        return kind
    if LOCALIZER_DESCRIPTION.search(str(first.get("SeriesDescription", "") or "")):
        return "a localizer (by its description)"
    if modality not in PROJECTION_MODALITIES and "ImageOrientationPatient" in first:
        normal = _slice_normal(first)
        tilt = float(np.degrees(np.arccos(min(1.0, abs(normal[2]) / (np.linalg.norm(normal) or 1.0)))))
        if tilt > MAX_AXIAL_TILT_DEG:
            return f"not axial (slices tilted {tilt:.0f} degrees from axial)"
    return None


def _patients(series: Dict[str, List[Dataset]]) -> List[Tuple[str, str]]:
    """The distinct (PatientID, PatientName) of the images; de-identified empty values count as one patient."""
    found = {(str(items[0].get("PatientID", "") or "").strip(), str(items[0].get("PatientName", "") or "").strip())
             for items in series.values()}
    return sorted(found)


def _validate(items: List[Dataset], folder: Path, description: str, projection: bool, needed: int) -> float:
    """Checks of the chosen series; returns the slice spacing (0.0 for single images)."""
    if len(items) < needed:
        raise InputError(f"Series {description} in {folder} has {len(items)} image(s), at least {needed} needed.")
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in items}
    if len(shapes) > 1:
        raise InputError(f"Images of series {description} in {folder} differ in size: {sorted(shapes)}.")
    return 0.0 if projection or len(items) == 1 else _slice_spacing(items, folder, description)


def _narrow(candidates: Dict[str, List[Dataset]], folder: Path, series_uid: Optional[str],
            series_description: Optional[str]) -> Dict[str, List[Dataset]]:
    """Rule 3: the series the user named, exactly one."""
    if series_uid is None and series_description is None:
        return candidates
    if series_uid is not None:
        chosen = {uid: items for uid, items in candidates.items() if uid == str(series_uid).strip()}
        asked = "the SeriesInstanceUID given"
    else:
        try:
            pattern = re.compile(series_description, re.IGNORECASE)
        except re.error as e:
            raise InputError(f"--series-description {series_description!r} is not a regular expression: {e}") from e
        chosen = {uid: items for uid, items in candidates.items()
                  if pattern.search(str(items[0].get("SeriesDescription", "") or ""))}
        asked = f"--series-description {series_description!r}"
    names = "; ".join(_describe(items) for items in candidates.values()) or "none"
    if not chosen:
        raise InputError(f"No eligible series in {folder} matches {asked}; the eligible series are: {names}.")
    if len(chosen) > 1:
        raise InputError(f"{len(chosen)} series in {folder} match {asked} "
                         f"({'; '.join(_describe(items) for items in chosen.values())}); name exactly one.")
    return chosen


def check_dicom_input(folder, modality: Union[str, Sequence[str]] = "CT", min_slices: Optional[int] = None,
                      series_uid: Optional[str] = None, series_description: Optional[str] = None) -> Dict:
    """Check a DICOM input folder before a deploy app runs and choose its series; one InputError otherwise.

    The series is chosen by the rule of the module docstring. Files are searched recursively, like the SDK's
    loader; non-DICOM files and DICOM objects without pixel data are skipped with a log line; a damaged DICOM file
    is an error.

    Args:
        folder: the folder the app will read.
        modality: the modality (or modalities, e.g. ``("DX", "CR")``) the app segments or classifies.
        min_slices: fewest images the series must have; default 1 for projection images (DX, CR, ...), else 2.
        series_uid: segment exactly this series (SeriesInstanceUID).
        series_description: segment the one series whose SeriesDescription matches this regular expression.

    Returns:
        ``{"folder", "modality", "series_instance_uid", "study_instance_uid", "series_description",
        "series_number", "num_slices", "rows", "columns", "spacing", "skipped_files", "skipped_series"}``,
        ``spacing`` in mm in ``(x, y, z)`` order (column spacing, row spacing, slice spacing; 0.0 for one image).
    """
    folder = Path(folder)
    wanted = {modality.upper()} if isinstance(modality, str) else {m.upper() for m in modality}
    if not folder.is_dir():
        raise InputError(f"DICOM input folder {folder} does not exist or is not a folder; pass the study's folder.")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise InputError(f"DICOM input folder {folder} is empty; copy the study's DICOM files into it.")
    series: Dict[str, List[Dataset]] = {}
    skipped = 0
    for path in files:
        ds = _read_image(path, folder)
        if ds is None or "SeriesInstanceUID" not in ds:
            skipped += 1
            continue
        series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    if not series:
        examples = ", ".join(p.name for p in files[:3])
        raise InputError(f"No DICOM image in {folder}: none of its {len(files)} file(s) ({examples}"
                         f"{', ...' if len(files) > 3 else ''}) is a DICOM image; pass a folder of DICOM files.")
    patients = _patients(series)
    if len(patients) > 1:
        raise InputError(f"The input {folder} holds images of {len(patients)} different patients; one run segments "
                         "one patient's study: give each patient's files in a folder of their own.")
    studies = {str(items[0].get("StudyInstanceUID", "")) for items in series.values()}

    def describe(items: List[Dataset]) -> str:  # with several studies, which one a series belongs to
        if len(studies) < 2:
            return _describe(items)
        first = items[0]
        study = " ".join(str(first.get(k, "") or "").strip() for k in ("StudyDate", "StudyDescription")).strip()
        return f"{_describe(items)} of the study {redact_uids(study) or 'without date or description'!r}"

    reasons = {uid: _why_skipped(items, wanted) for uid, items in series.items()}
    candidates = {uid: items for uid, items in series.items() if reasons[uid] is None}
    skipped_series = [f"{describe(series[uid])}: {why}" for uid, why in reasons.items() if why]
    if not candidates:
        label = "/".join(sorted(wanted))
        found = "; ".join(f"{items[0].get('Modality', '?')} {_describe(items)} ({len(items)} images, "
                          f"{reasons[uid]})" for uid, items in series.items())
        raise InputError(f"No {label} series in {folder} that the app can segment: found only {found}. "
                         f"The app needs an axial {label} image series.")
    candidates = _narrow(candidates, folder, series_uid, series_description)
    ranked = sorted(candidates.items(), key=lambda item: -len(item[1]))
    first_error, failures, failed = None, [], set()
    for uid, chosen in ranked:
        first = chosen[0]
        chosen_modality = str(first.Modality).upper()
        projection = chosen_modality in PROJECTION_MODALITIES
        description = describe(chosen)
        try:
            slice_spacing = _validate(chosen, folder, description, projection,
                                      min_slices if min_slices is not None else (1 if projection else 2))
            check_decodable(first, Path(str(getattr(first, "filename", "") or "")).name or description)
        except InputError as err:
            first_error = first_error or err
            failures.append(f"{description}: {str(err).split(' in ' + str(folder))[-1].strip()}")
            failed.add(uid)
            skipped_series.append(f"{description}: {err}")
            logger.warning("passed over series %s: %s", description, err)
            continue
        for other, items in ranked:
            if other == uid or other in failed:
                continue
            if len(items) == len(chosen):
                note = (f"{describe(items)}: passed over, as large as the chosen {description} ({len(items)} images "
                        "each); the first found was taken: choose with --series-description or --series-uid")
                logger.warning("%s", note)
            else:
                note = f"{describe(items)}: passed over, {len(items)} images (the chosen series has {len(chosen)})"
            skipped_series.append(note)
        for note in skipped_series:
            logger.info("skipped series %s", note)
        pixel = first.get("PixelSpacing") or first.get("ImagerPixelSpacing") or [1.0, 1.0]
        return {
            "folder": str(folder),
            "modality": chosen_modality,
            "series_instance_uid": uid,
            "study_instance_uid": str(first.get("StudyInstanceUID", "")),
            "series_description": str(first.get("SeriesDescription", "") or ""),
            "series_number": first.get("SeriesNumber", None),
            "num_slices": len(chosen),
            "rows": int(first.Rows),
            "columns": int(first.Columns),
            "spacing": (float(pixel[1]), float(pixel[0]), slice_spacing),
            "skipped_files": skipped,
            "skipped_series": skipped_series,
        }
    if len(failures) == 1:
        raise first_error
    raise InputError(f"None of the {len(failures)} candidate series in {folder} can be segmented: "
                     + "; ".join(failures))
