"""DICOM input folders shaped like real scanner exports, written with pydicom (issue 17).

A real exported study is not one clean series: it has a localizer (scout), secondary captures ("Exam Summary",
dose report), reformats, structured reports without pixel data, sometimes a second study of the same patient; a
de-identified study lacks the type 2 attributes a de-identification profile removes. Each helper here adds one such
piece to a folder, beside the CT series the app should segment.
"""

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from monai_prune.deploy.dicom import write_ct_series

# Attributes the DICOM PS3.15 Basic Application Level Confidentiality Profile removes (X) or empties (Z) that the
# SEG writer copies from its source: removed here, the harsher of the two.
DEIDENTIFIED = ("PatientBirthDate", "PatientSex", "PatientName", "PatientID", "StudyDate", "StudyTime",
                "AccessionNumber", "ReferringPhysicianName", "StudyID", "SeriesDate", "SeriesTime", "ContentDate",
                "ContentTime", "InstitutionName", "StudyDescription", "OperatorsName", "PatientAge")


def _retag(folder: Path, **attributes) -> None:
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        for key, value in attributes.items():
            setattr(ds, key, value)
        ds.save_as(path)


def study_uid_of(folder: Path) -> str:
    return str(pydicom.dcmread(sorted(folder.glob("*.dcm"))[0]).StudyInstanceUID)


def series_uid_of(folder: Path) -> str:
    return str(pydicom.dcmread(sorted(folder.glob("*.dcm"))[0]).SeriesInstanceUID)


def add_localizer(root: Path, study_uid: str, patient_id: str = "ANON0001", slices: int = 3) -> Path:
    """A 3-image scout: ImageType LOCALIZER, coronal slices (what a CT topogram export looks like)."""
    folder = root / "localizer"
    write_ct_series(np.full((32, 32, slices), -500.0), folder, study_uid=study_uid, patient_id=patient_id,
                    series_description="Topogram 0.6 T20f", series_number=1, seed=11)
    for k, path in enumerate(sorted(folder.glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.ImagePositionPatient = [0, float(k), 0]
        ds.save_as(path)
    return folder


def add_coronal_reformat(root: Path, study_uid: str, patient_id: str = "ANON0001", slices: int = 60) -> Path:
    """A coronal multiplanar reformat with more images than the axial series: never the one to segment."""
    folder = root / "coronal"
    write_ct_series(np.full((32, 32, slices), 40.0), folder, study_uid=study_uid, patient_id=patient_id,
                    series_description="Cor 3mm", series_number=5, seed=12)
    for k, path in enumerate(sorted(folder.glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.ImageType = ["DERIVED", "SECONDARY", "MPR"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.ImagePositionPatient = [0, 3.0 * k, 0]
        ds.save_as(path)
    return folder


def add_exam_summary(root: Path, study_uid: str, patient_id: str = "ANON0001") -> Path:
    """A secondary capture "Exam Summary" (Modality CT, Secondary Capture Image Storage, one RGB image, no
    geometry): the series the SDK picked first in a real export, and crashed on."""
    folder = root / "summary"
    folder.mkdir(parents=True)
    ds = Dataset()
    sop_uid = generate_uid(entropy_srcs=[study_uid, "summary"])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Anonymous^Synthetic", patient_id, "", "O"
    ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = study_uid, "1", "20240101", "120000"
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study_uid, "summary-series"])
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = "CT", 999, "Exam Summary", 1
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 24, 32, 8, 8, 7, 0
    ds.PixelData = np.zeros((24, 32, 3), np.uint8).tobytes()
    ds.save_as(folder / "summary.dcm", enforce_file_format=True)
    return folder


def add_structured_report(root: Path, study_uid: str, patient_id: str = "ANON0001") -> Path:
    """A dose report-like SR document: a DICOM object without pixel data (skipped, not "corrupt")."""
    folder = root / "sr"
    folder.mkdir(parents=True)
    sop_class = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR Storage
    ds = Dataset()
    sop_uid = generate_uid(entropy_srcs=[study_uid, "sr"])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientID, ds.StudyInstanceUID, ds.Modality = patient_id, study_uid, "SR"
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study_uid, "sr-series"])
    ds.SeriesNumber, ds.SeriesDescription, ds.ValueType = 998, "Dose Report", "CONTAINER"
    ds.save_as(folder / "dose.dcm", enforce_file_format=True)
    return folder


def deidentify(folder: Path) -> None:
    """Remove, from every file under ``folder``, the attributes of :data:`DEIDENTIFIED`."""
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        for keyword in DEIDENTIFIED:
            if keyword in ds:
                delattr(ds, keyword)
        ds.PatientIdentityRemoved, ds.DeidentificationMethod = "YES", "DICOM PS3.15 Basic Profile (synthetic test)"
        ds.save_as(path)


def realistic_study(volume: np.ndarray, root: Path, spacing=(1.0, 1.0, 2.0), patient_id: str = "ANON0001") -> Path:
    """``root/ct`` (the axial series to segment) + a localizer, a coronal reformat with more images, an "Exam
    Summary" secondary capture and a dose SR, all in one study: the shape of a real scanner export."""
    ct = root / "ct"
    write_ct_series(volume, ct, spacing=spacing, patient_id=patient_id, series_description="Abdomen 2.0 B30f",
                    series_number=2, seed=10)
    study = study_uid_of(ct)
    add_localizer(root, study, patient_id)
    add_coronal_reformat(root, study, patient_id, slices=volume.shape[2] + 10)
    add_exam_summary(root, study, patient_id)
    add_structured_report(root, study, patient_id)
    return ct
