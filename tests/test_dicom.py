"""DICOM writers, SEG reader and input checks of monai_prune.deploy.dicom, against MONAI, highdicom and the Deploy SDK.

The volume is 64 x 48 x 24 with different spacings on every axis, so a swapped x/y or a reversed z shows.
"""

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.data import create_test_image_3d
from pydicom.uid import CTImageStorage, DigitalXRayImageStorageForPresentation

from monai_prune.deploy.dicom import (
    check_dicom_input,
    dice,
    read_segmentation,
    segment_descriptions,
    write_ct_series,
    write_xray,
)
from monai_prune.errors import InputError

SPACING, ORIGIN = (0.8, 0.7, 2.5), (-10.0, 20.0, 30.0)


@pytest.fixture(scope="module")
def volume():
    """Hounsfield units (x, y, z) and labels (x, y, z): sphere voxels are segment 1, or 2 where x >= 32."""
    image, labels = create_test_image_3d(64, 48, 24, num_objs=6, rad_max=8, rad_min=4, noise_max=0.1,
                                         num_seg_classes=1, random_state=np.random.RandomState(0))
    hu = np.round(image * 1000.0 - 500.0)
    labels = labels.astype(np.uint8)
    labels[32:][labels[32:] == 1] = 2
    assert (labels == 1).any() and (labels == 2).any()
    return hu, labels


@pytest.fixture(scope="module")
def series(volume, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct")
    paths = write_ct_series(volume[0], folder, spacing=SPACING, origin=ORIGIN, patient_id="PAT123",
                            patient_name="Doe^Jane")
    return folder, paths


def _copy(folder, tmp_path, name="copy"):
    return Path(shutil.copytree(folder, tmp_path / name))


def test_series_attributes(volume, series, tmp_path):
    hu, _ = volume
    _, paths = series
    assert [Path(p).name for p in paths] == [f"slice_{k:04d}.dcm" for k in range(24)]
    slices = [pydicom.dcmread(p) for p in paths]
    assert len({ds.SOPInstanceUID for ds in slices}) == 24
    assert len({(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID) for ds in slices}) == 1
    for k, ds in enumerate(slices):
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert ds.InstanceNumber == k + 1
        assert np.allclose(ds.ImagePositionPatient, [ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SPACING[2]])
        assert [float(v) for v in ds.PixelSpacing] == [SPACING[1], SPACING[0]]  # [row spacing (y), column spacing (x)]
        assert float(ds.SliceThickness) == SPACING[2]
        assert (ds.Rows, ds.Columns) == (48, 64)
        assert (ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (0, 16, 16, 15)  # uint16
        np.testing.assert_array_equal(pydicom.pixels.apply_rescale(ds.pixel_array, ds), hu[:, :, k].T)
    # UIDs follow the seed: the same call writes the same files, a shared study_uid is kept
    again = write_ct_series(hu, tmp_path / "again", spacing=SPACING, origin=ORIGIN, patient_id="PAT123",
                            patient_name="Doe^Jane")
    assert [Path(p).read_bytes() for p in again] == [Path(p).read_bytes() for p in paths]
    mr = write_ct_series(hu, tmp_path / "mr", modality="MR", study_uid=slices[0].StudyInstanceUID, seed=None)
    mr0 = pydicom.dcmread(mr[0])
    assert mr0.SOPClassUID == pydicom.uid.MRImageStorage and mr0.StudyInstanceUID == slices[0].StudyInstanceUID
    assert mr0.SeriesInstanceUID != slices[0].SeriesInstanceUID


def test_stored_as_int16_below_the_intercept(tmp_path):
    hu = np.full((8, 6, 3), -2000.0)
    ds = pydicom.dcmread(write_ct_series(hu, tmp_path)[0])
    assert ds.PixelRepresentation == 1 and ds.pixel_array.dtype == np.int16 and ds.pixel_array[0, 0] == -976
    with pytest.raises(InputError, match="do not fit 16-bit"):
        write_ct_series(np.full((4, 4, 2), 1e6), tmp_path / "big")
    with pytest.raises(InputError, match="3D"):
        write_ct_series(np.zeros((4, 4)), tmp_path / "flat")


def test_monai_load_image_gives_the_volume_back(volume, series):
    from monai.transforms import LoadImage

    hu, _ = volume
    image = LoadImage(reader="PydicomReader", image_only=True)(str(series[0]))
    assert tuple(image.shape) == hu.shape
    np.testing.assert_array_equal(np.asarray(image), hu)
    # RAS affine: x and y negated, every axis with its own spacing
    expected = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    expected[:3, 3] = [-ORIGIN[0], -ORIGIN[1], ORIGIN[2]]
    np.testing.assert_allclose(np.asarray(image.affine), expected, atol=1e-6)


def _segmentation(source_datasets, frames, path, algorithm="SphereNet", version="1.2"):
    """A BINARY DICOM SEG with segments 1 and 2, ``frames[i]`` (rows, columns) being on ``source_datasets[i]``."""
    hd = pytest.importorskip("highdicom")
    from pydicom.sr.codedict import codes

    algo = hd.AlgorithmIdentificationSequence(name=algorithm, family=codes.DCM.ArtificialIntelligence,
                                              version=version)
    descriptions = [
        hd.seg.SegmentDescription(number, label, codes.SCT.Tissue, codes.SCT.Tissue,
                                  hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algo)
        for number, label in ((1, "left spheres"), (2, "right spheres"))
    ]
    seg = hd.seg.Segmentation(
        source_images=source_datasets, pixel_array=np.stack(frames), segment_descriptions=descriptions,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, series_instance_uid=hd.UID(), series_number=2,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="monai-prune", manufacturer_model_name="test",
        software_versions="0.1", device_serial_number="0")
    seg.save_as(path)
    return path


@pytest.mark.parametrize("shuffle", [False, True])
def test_read_segmentation_matches_frames_by_uid(volume, series, tmp_path, shuffle):
    _, labels = volume
    folder, paths = series
    order = list(range(len(paths)))
    if shuffle:
        random.Random(0).shuffle(order)
    sources = [pydicom.dcmread(paths[k]) for k in order]
    seg_path = _segmentation(sources, [labels[:, :, k].T for k in order], tmp_path / "seg.dcm")
    stray = folder / "notes.txt"  # a non-DICOM file in the series folder does not matter
    stray.write_text("not DICOM")
    try:
        result = read_segmentation(seg_path, folder)
    finally:
        stray.unlink()
    assert result.shape == labels.shape and result.dtype == np.uint8
    np.testing.assert_array_equal(result, labels)
    assert dice(result, labels, 2) == 1.0
    assert segment_descriptions(seg_path) == [
        {"number": 1, "label": "left spheres", "property_type": "Tissue", "algorithm_type": "AUTOMATIC",
         "algorithm_name": "SphereNet", "algorithm_version": "1.2"},
        {"number": 2, "label": "right spheres", "property_type": "Tissue", "algorithm_type": "AUTOMATIC",
         "algorithm_name": "SphereNet", "algorithm_version": "1.2"},
    ]
    with pytest.raises(InputError, match="pass the folder of the segmented series"):
        read_segmentation(seg_path, tmp_path)
    partial = _copy(folder, tmp_path, "partial")
    (partial / "slice_0003.dcm").unlink()
    with pytest.raises(InputError, match="1 of the 24 slices .* are not in"):
        read_segmentation(seg_path, partial)


def test_deploy_sdk_loads_the_series_and_writes_a_seg_we_read_back(volume, series, tmp_path):
    """The SDK's own operators, called outside an app: loader -> selector -> volume -> SEG writer."""
    operators = pytest.importorskip("monai.deploy.operators")
    from monai.deploy.core import Fragment
    from monai.deploy.operators.dicom_seg_writer_operator import SegmentDescription
    from pydicom.sr.codedict import codes

    hu, labels = volume
    study = tmp_path / "study"
    shutil.copytree(series[0], study / "ct")
    write_ct_series(hu, study / "mr", modality="MR", series_description="T1 axial",
                    study_uid=pydicom.dcmread(series[1][0]).StudyInstanceUID)
    fragment = Fragment()
    studies = operators.DICOMDataLoaderOperator(fragment, name="loader").load_data_to_studies(study)
    assert len(studies) == 1 and len(studies[0].get_all_series()) == 2
    rules = {"selections": [{"name": "CT", "conditions": {"Modality": "(?i)CT"}}]}
    selector = operators.DICOMSeriesSelectorOperator(fragment, rules=json.dumps(rules), name="selector")
    selected = selector.filter(rules, studies)
    image = operators.DICOMSeriesToVolumeOperator(fragment, name="volume").convert_to_image(selected)
    # The SDK's Image array is (z, y, x): the volume with axes 0 and 2 swapped
    np.testing.assert_array_equal(image.asnumpy(), hu.transpose(2, 1, 0))
    meta = image.metadata()
    assert float(meta["row_pixel_spacing"]) == SPACING[1] and float(meta["col_pixel_spacing"]) == SPACING[0]
    assert meta["depth_pixel_spacing"] == pytest.approx(SPACING[2])
    # A (z, y, x) label array given to the SDK's SEG writer reads back as our (x, y, z) labels
    description = SegmentDescription("spheres", codes.SCT.Tissue, codes.SCT.Tissue, "SphereNet", "0.1")
    writer = operators.DICOMSegmentationWriterOperator(fragment, segment_descriptions=[description, description],
                                                       output_folder=tmp_path / "out", name="seg_writer")
    writer.process_images(np.ascontiguousarray(labels.transpose(2, 1, 0)), selected, tmp_path / "out")
    (seg_path,) = (tmp_path / "out").glob("*.dcm")
    np.testing.assert_array_equal(read_segmentation(seg_path, study), labels)
    assert [d["algorithm_name"] for d in segment_descriptions(seg_path)] == ["SphereNet", "SphereNet"]


def test_check_accepts_a_good_series_and_skips_stray_files(series):
    folder, _ = series
    (folder / "README.txt").write_text("exported by hand")
    try:
        summary = check_dicom_input(folder)
    finally:
        (folder / "README.txt").unlink()
    assert summary["num_slices"] == 24 and (summary["rows"], summary["columns"]) == (48, 64)
    assert summary["spacing"] == pytest.approx(SPACING)
    assert summary["modality"] == "CT" and summary["skipped_files"] == 1
    assert summary["series_instance_uid"] == pydicom.dcmread(series[1][0]).SeriesInstanceUID


def _shift_slice(folder, index, dz):
    path = folder / f"slice_{index:04d}.dcm"
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + dz
    ds.save_as(path)


def _truncate(folder, index, keep=0.5):
    path = folder / f"slice_{index:04d}.dcm"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda f: shutil.rmtree(f), "does not exist"),
        (lambda f: [p.unlink() for p in f.iterdir()], "is empty"),
        (lambda f: [p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200)) if p.name.endswith("0.dcm") else
                    p.write_text("hello") for p in f.iterdir()], "No DICOM image"),
        (lambda f: _truncate(f, 5), "slice_0005.dcm .* truncated"),  # cut in the pixel data
        (lambda f: _truncate(f, 7, keep=0.08), "slice_0007.dcm .* truncated"),  # cut in the header
        (lambda f: _shift_slice(f, 10, 1.0), r"inconsistent slice spacing .* from 1\.5 to 3\.5 mm"),
        (lambda f: _shift_slice(f, 10, -2.5), "same position"),
    ],
    ids=["missing", "empty", "not-dicom", "truncated-pixels", "truncated-header", "shifted-slice", "duplicate"],
)
def test_check_rejects_bad_input(series, tmp_path, damage, match):
    folder = _copy(series[0], tmp_path)
    damage(folder)
    with pytest.raises(InputError, match=match) as info:
        check_dicom_input(folder)
    message = str(info.value)
    assert str(folder) in message and "PAT123" not in message and "Doe" not in message


def test_check_names_the_series_found_when_the_modality_is_missing(volume, tmp_path):
    write_ct_series(volume[0], tmp_path / "mr", modality="MR", series_description="T1 axial")
    with pytest.raises(InputError, match=r"No CT series .* found only MR 'T1 axial' \(series 1\) \(24 images, modality MR\)"):
        check_dicom_input(tmp_path)
    assert check_dicom_input(tmp_path, modality="MR")["num_slices"] == 24
    with pytest.raises(InputError, match="at least 30 needed"):
        check_dicom_input(tmp_path, modality="MR", min_slices=30)


def test_check_on_pydicom_test_files(tmp_path):
    """Real files shipped with pydicom: a single CT slice, a truncated MR image, a DICOMDIR tree."""
    from pydicom.data import get_testdata_file

    root = Path(pydicom.__file__).parent / "data" / "test_files"
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    shutil.copy(root / "dicomdirtests" / "DICOMDIR", tmp_path / "DICOMDIR")  # skipped like the SDK does
    with pytest.raises(InputError, match="has 1 image.*at least 2 needed"):
        check_dicom_input(tmp_path)
    summary = check_dicom_input(tmp_path, min_slices=1)
    assert (summary["num_slices"], summary["rows"], summary["columns"], summary["skipped_files"]) == (1, 128, 128, 1)
    shutil.copy(get_testdata_file("MR_truncated.dcm"), tmp_path / "mr.dcm")
    with pytest.raises(InputError, match="mr.dcm .* truncated"):
        check_dicom_input(tmp_path, min_slices=1)


@pytest.mark.parametrize("modality, sop_class", [("DX", DigitalXRayImageStorageForPresentation),
                                                 ("CR", pydicom.uid.ComputedRadiographyImageStorage)])
def test_write_xray(tmp_path, modality, sop_class):
    image = np.arange(40 * 30, dtype=np.float64).reshape(40, 30)  # (x, y)
    path = write_xray(image, tmp_path / "xray" / "image.dcm", modality=modality, pixel_spacing=(0.15, 0.2))
    ds = pydicom.dcmread(path)
    assert ds.Modality == modality and ds.SOPClassUID == sop_class and ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.pixel_array.shape == (30, 40) and ds.pixel_array.dtype == np.uint16
    np.testing.assert_array_equal(ds.pixel_array, image.T)
    summary = check_dicom_input(tmp_path / "xray", modality=("DX", "CR"))
    assert summary["num_slices"] == 1 and summary["spacing"] == pytest.approx((0.15, 0.2, 0.0))
    with pytest.raises(InputError, match="No CT series"):
        check_dicom_input(tmp_path / "xray")
    with pytest.raises(InputError, match=r"\[0, 65535\]"):
        write_xray(image - 5, tmp_path / "negative.dcm")


def test_deploy_sdk_loads_the_xray(tmp_path):
    operators = pytest.importorskip("monai.deploy.operators")
    from monai.deploy.core import Fragment

    image = np.arange(40 * 30, dtype=np.float64).reshape(40, 30)  # (x, y)
    write_xray(image, tmp_path / "image.dcm")
    fragment = Fragment()
    studies = operators.DICOMDataLoaderOperator(fragment, name="loader").load_data_to_studies(tmp_path)
    selected = operators.DICOMSeriesSelectorOperator(fragment, name="selector").filter(None, studies)
    loaded = operators.DICOMSeriesToVolumeOperator(fragment, name="volume").convert_to_image(selected)
    np.testing.assert_array_equal(loaded.asnumpy(), image.T[None])  # (1, y, x)


def test_dice():
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    assert dice(a, b) == 1.0
    a[:2], b[1:3] = 1, 1
    assert dice(a, b) == pytest.approx(0.5)
    with pytest.raises(InputError):
        dice(a, b[:2])
