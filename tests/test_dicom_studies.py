"""The series a deploy app segments, chosen by one stated rule on folders shaped like real exports (issue 17)."""

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from helpers.dicom_studies import (add_exam_summary, add_localizer, deidentify, realistic_study, series_uid_of,
                           study_uid_of)
from monai_prune.deploy.dicom import check_dicom_input, write_ct_series
from monai_prune.errors import InputError

HU = np.full((32, 32, 20), 40.0)


def test_the_axial_ct_series_is_chosen_past_localizer_reformat_summary_and_sr(tmp_path):
    ct = realistic_study(HU, tmp_path)
    summary = check_dicom_input(tmp_path)
    assert summary["series_instance_uid"] == series_uid_of(ct) and summary["num_slices"] == 20
    skipped = " | ".join(summary["skipped_series"])
    assert "'Topogram 0.6 T20f' (series 1): a localizer" in skipped
    assert "'Cor 3mm' (series 5): not axial" in skipped
    assert "'Exam Summary' (series 999): a secondary capture" in skipped
    assert summary["skipped_files"] == 1  # the dose SR: no pixel data, skipped (not "corrupt")


def test_only_the_summary_and_localizer_is_a_clear_refusal(tmp_path):
    ct = tmp_path / "ct"
    write_ct_series(HU[:, :, :3], ct)
    study = study_uid_of(ct)
    for path in ct.iterdir():
        path.unlink()
    add_localizer(tmp_path, study)
    add_exam_summary(tmp_path, study)
    with pytest.raises(InputError, match=r"No CT series .* that the app can segment: found only .*'Topogram "
                                         r"0.6 T20f' \(series 1\) \(3 images, a localizer\).*'Exam Summary'.*"
                                         r"a secondary capture") as info:
        check_dicom_input(tmp_path)
    assert "1.2." not in str(info.value) and "<uid>" not in str(info.value)


def test_two_studies_of_one_patient_most_slices_unless_named(tmp_path):
    big = tmp_path / "study1"
    write_ct_series(HU, big, series_description="Abdomen 2.0", seed=1)
    small = tmp_path / "study2"
    write_ct_series(HU[:, :, :12], small, series_description="Abdomen follow-up", seed=2)
    assert study_uid_of(big) != study_uid_of(small)
    assert check_dicom_input(tmp_path)["series_instance_uid"] == series_uid_of(big)
    chosen = check_dicom_input(tmp_path, series_uid=series_uid_of(small))
    assert chosen["series_instance_uid"] == series_uid_of(small) and chosen["num_slices"] == 12
    assert check_dicom_input(tmp_path, series_description="follow")["series_instance_uid"] == series_uid_of(small)
    with pytest.raises(InputError, match="2 series .* match --series-description 'abdomen'.*name exactly one"):
        check_dicom_input(tmp_path, series_description="abdomen")
    with pytest.raises(InputError, match="No eligible series .* matches the SeriesInstanceUID given; the eligible "
                                         "series are: 'Abdomen 2.0' \\(series 1\\); 'Abdomen follow-up'"):
        check_dicom_input(tmp_path, series_uid="1.2.3.4.5.6")
    with pytest.raises(InputError, match="not a regular expression"):
        check_dicom_input(tmp_path, series_description="(")


def test_a_larger_series_with_missing_slices_is_passed_over(tmp_path):
    broken = tmp_path / "thin"
    write_ct_series(np.full((32, 32, 30), 40.0), broken, series_description="thin", seed=3)
    os.remove(sorted(broken.glob("*.dcm"))[10])  # a slice lost in transfer
    good = tmp_path / "thick"
    write_ct_series(HU, good, series_description="thick", seed=4)
    summary = check_dicom_input(tmp_path)
    assert summary["series_instance_uid"] == series_uid_of(good)
    assert any("'thin'" in s and "inconsistent slice spacing" in s for s in summary["skipped_series"])
    os.remove(sorted(good.glob("*.dcm"))[5])
    with pytest.raises(InputError, match="'thin' .* inconsistent slice spacing"):
        check_dicom_input(tmp_path)


def test_two_patients_are_refused(tmp_path):
    write_ct_series(HU, tmp_path / "a", patient_id="PAT-A", patient_name="Doe^Jane", seed=5)
    write_ct_series(HU[:, :, :10], tmp_path / "b", patient_id="PAT-B", patient_name="Roe^Rick", seed=6)
    with pytest.raises(InputError, match="holds images of 2 different patients") as info:
        check_dicom_input(tmp_path)
    assert "PAT-" not in str(info.value) and "Doe" not in str(info.value)


def test_a_deidentified_study_is_accepted(tmp_path):
    ct = realistic_study(HU, tmp_path)
    deidentify(tmp_path)
    assert check_dicom_input(tmp_path)["series_instance_uid"] == series_uid_of(ct)


def test_real_scanner_exports_shipped_with_pydicom():
    """pydicom's dicomdirtests: de-identified real CT and MR studies (images cut to 16x16, few slices; 98892001 and
    98892003 are two studies of one patient, 77654033 another patient). The CT study's Scout is skipped and its gated
    series chosen; the MR study holds only localizers, pilots (ImageType OTHER, named so in SeriesDescription) and an
    angio MIP: refused, naming each; the whole folder (two patients): refused."""
    root = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
    ct = check_dicom_input(root / "98892001", min_slices=1)
    assert ct["series_description"] == "SmartScore - Gated 0.5 sec" and ct["num_slices"] == 5
    assert ct["skipped_series"] == ["'Scout' (series 4): a localizer"]
    with pytest.raises(InputError, match=r"No MR series .*'T/S/C RF FAST PILOT' \(series 2\) \(3 images, a localizer "
                                         r"\(by its description\)\).*'ANGIO Projected from   C' \(series 700\) \(7 "
                                         r"images, a projection image \(MIP\)\)"):
        check_dicom_input(root / "98892003", modality="MR", min_slices=1)
    with pytest.raises(InputError, match="holds images of 2 different patients"):
        check_dicom_input(root, min_slices=1)


def test_what_was_passed_over_is_said_with_its_study_and_a_tie_is_a_warning(tmp_path, caplog):
    """Found on real scanner exports (rordenlab's dcm_qa_ct Philips disc: two studies, two 140-slice series): the run
    summary names every eligible series it did not take, with the study it belongs to when there are several, and
    a tie in size is a warning that says how to choose."""
    write_ct_series(HU, tmp_path / "study1", series_description="Abdomen 2.0", seed=1)
    write_ct_series(HU[:, :, :12], tmp_path / "study2", series_description="Abdomen follow-up", seed=2)
    passed = check_dicom_input(tmp_path)["skipped_series"]
    assert len(passed) == 1 and passed[0].startswith("'Abdomen follow-up' (series 1) of the study ")
    assert passed[0].endswith("passed over, 12 images (the chosen series has 20)")

    tie = tmp_path / "tie"
    study = study_uid_of(tmp_path / "study1")
    write_ct_series(HU, tie / "a", series_description="Soft tissue", study_uid=study, series_number=2, seed=3)
    write_ct_series(HU, tie / "b", series_description="Bone", study_uid=study, series_number=3, seed=4)
    with caplog.at_level("WARNING", logger="monai_prune"):
        summary = check_dicom_input(tie)
    other = "'Bone' (series 3)" if summary["series_description"] == "Soft tissue" else "'Soft tissue' (series 2)"
    assert summary["skipped_series"] == [
        f"{other}: passed over, as large as the chosen '{summary['series_description']}' (series "
        f"{summary['series_number']}) (20 images each); the first found was taken: choose with --series-description "
        "or --series-uid"]
    assert summary["skipped_series"][0] in caplog.text


def test_a_series_in_blocks_of_different_spacing_is_refused_saying_so(tmp_path):
    """A real GE head CT (dcm_qa_ct) is one series of 4 mm slices then 7 mm slices: one volume cannot stack it."""
    write_ct_series(HU[:, :, :6], tmp_path, spacing=(1.0, 1.0, 4.0), series_description="head", seed=5)
    first = [pydicom.dcmread(p) for p in sorted(tmp_path.glob("*.dcm"))]
    last = max(float(ds.ImagePositionPatient[2]) for ds in first)
    for i, path in enumerate(sorted(tmp_path.glob("*.dcm"))[:4]):  # four more slices, 7 mm apart, same series
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], last + 7.0 * (i + 1)]
        ds.InstanceNumber = 100 + i
        ds.save_as(tmp_path / f"block2_{i}.dcm")
    with pytest.raises(InputError, match=r"inconsistent slice spacing .* from 4 to 7 mm .* blocks of different "
                                         r"spacing .* each block as a series of its own"):
        check_dicom_input(tmp_path)
