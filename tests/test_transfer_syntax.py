"""Compressed CT series (issue 17): each transfer syntax a PACS sends decodes with what the deploy extra installs,
through pydicom (every installed plugin) and through the MONAI Deploy SDK's loader -> selector -> volume operators;
``check_decodable`` passes on them, and says in one line which package to install when a decoder is missing.

A 64 x 64 x 6 CT phantom is written uncompressed by ``write_ct_series`` and re-encoded file by file
(``tests/dicom_codecs.py``), once with unsigned stored values (RescaleIntercept -1024) and once with signed ones
(intercept 0, PixelRepresentation 1): signed pixels are where JPEG decoders differ.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGLosslessSV1, MPEG2MPML, RLELossless

from helpers.dicom_codecs import ENCODINGS, ct_volume, encode_series
from monai_prune.deploy.dicom import check_dicom_input, write_ct_series
from monai_prune.deploy.transfer_syntax import TRANSFER_SYNTAX_PACKAGES, check_decodable, describe_transfer_syntax
from monai_prune.errors import InputError

INTERCEPTS = {"unsigned": -1024.0, "signed": 0.0}
SV1_MESSAGE = ("DICOM file slice_0000.dcm uses JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 "
               "[Selection Value 1]) (1.2.840.10008.1.2.4.70), which cannot be decoded here: "
               "pip install pylibjpeg pylibjpeg-libjpeg (or python-gdcm).")


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """HU volume (x, y, z) and, per sign, the uncompressed series' paths."""
    hu = ct_volume()
    folder = tmp_path_factory.mktemp("plain")
    return hu, {sign: write_ct_series(hu, folder / sign, rescale_intercept=intercept)
                for sign, intercept in INTERCEPTS.items()}


@pytest.fixture(scope="module")
def sdk():
    """The SDK's loader, selector and volume operators, called outside an app (as in test_dicom.py)."""
    operators = pytest.importorskip("monai.deploy.operators")
    from monai.deploy.core import Fragment

    fragment = Fragment()
    return (operators.DICOMDataLoaderOperator(fragment, name="loader"),
            operators.DICOMSeriesSelectorOperator(fragment, name="selector"),
            operators.DICOMSeriesToVolumeOperator(fragment, name="volume"))


@pytest.fixture(scope="module")
def sv1_slice(originals, tmp_path_factory):
    """One JPEG Lossless SV1 slice (the syntax of issue 17)."""
    pytest.importorskip("gdcm")
    (path,) = encode_series(originals[1]["unsigned"][:1], tmp_path_factory.mktemp("sv1"), "jpeg-lossless-sv1")
    return Path(path)


def _sdk_volume(sdk, folder: Path) -> np.ndarray:
    loader, selector, volume = sdk
    selected = selector.filter(None, loader.load_data_to_studies(folder))
    return volume.convert_to_image(selected).asnumpy()


@pytest.mark.parametrize("sign", INTERCEPTS)
@pytest.mark.parametrize("name", ENCODINGS)
def test_compressed_series_decodes_in_pydicom_and_the_deploy_sdk(name, sign, originals, sdk, tmp_path):
    encoding = ENCODINGS[name]
    if encoding.needs != "pydicom":
        pytest.importorskip(encoding.needs)
    hu, plain = originals
    paths = encode_series(plain[sign], tmp_path / name, name)
    stored = np.stack([pydicom.dcmread(p).pixel_array for p in plain[sign]])  # (z, y, x)
    decoder = get_decoder(encoding.syntax)
    assert decoder.available_plugins, f"no pydicom plugin decodes {name} here: {decoder.missing_dependencies}"
    decoded = []
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == encoding.syntax
        assert check_decodable(ds, Path(path).name) is None  # (c) and nothing decoded is kept on ds
        assert ds._pixel_array is None
        # (a) every installed plugin gives the stored values back (within the syntax's bound when lossy)
        for plugin in decoder.available_plugins:
            array = decoder.as_array(ds, decoding_plugin=plugin)[0]
            assert array.dtype == stored.dtype, plugin
            error = np.abs(array.astype(np.int64) - stored[k]).max()
            assert error <= encoding.max_error, f"{plugin}: error {error} on slice {k}"
        decoded.append(ds.pixel_array)
    decoded = np.stack(decoded)
    if not encoding.lossy:
        np.testing.assert_array_equal(decoded, stored)
    # (b) the SDK turns the series into the HU volume, as (z, y, x), via the decoded values
    volume = _sdk_volume(sdk, tmp_path / name)
    np.testing.assert_array_equal(volume, decoded + INTERCEPTS[sign])
    if not encoding.lossy:
        np.testing.assert_array_equal(volume, hu.transpose(2, 1, 0))
    else:
        assert np.abs(volume - hu.transpose(2, 1, 0)).max() <= encoding.max_error


def test_missing_plugin_is_one_line_naming_the_syntax_and_packages(sv1_slice, monkeypatch):
    monkeypatch.setattr(get_decoder(JPEGLosslessSV1), "_available", {})  # as if pylibjpeg and gdcm were absent
    with pytest.raises(InputError) as err:
        check_decodable(pydicom.dcmread(sv1_slice), sv1_slice.name)
    assert str(err.value) == SV1_MESSAGE


def test_missing_plugin_when_they_are_not_installed(sv1_slice):
    """The same message from an interpreter where pylibjpeg's and GDCM's modules cannot be imported at all."""
    blocked = ["pylibjpeg", "libjpeg", "openjpeg", "rle", "gdcm"]
    code = (f"import sys\nsys.modules.update(dict.fromkeys({blocked!r}))\n"
            "import pydicom\nfrom monai_prune.deploy.transfer_syntax import check_decodable\n"
            f"check_decodable(pydicom.dcmread({str(sv1_slice)!r}), {sv1_slice.name!r})\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"InputError: {SV1_MESSAGE}\n" in result.stderr


@pytest.mark.parametrize("syntax", TRANSFER_SYNTAX_PACKAGES)
def test_every_listed_syntax_names_its_packages(syntax, originals, monkeypatch):
    ds = pydicom.dcmread(originals[1]["unsigned"][0])
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    monkeypatch.setattr(get_decoder(syntax), "_available", {})
    with pytest.raises(InputError) as err:
        check_decodable(ds, "x.dcm")
    message = str(err.value)
    assert "\n" not in message and describe_transfer_syntax(syntax) in message
    assert f"pip install {' '.join(TRANSFER_SYNTAX_PACKAGES[syntax][0])}" in message


def test_damaged_codestream_is_refused(sv1_slice):
    ds = pydicom.dcmread(sv1_slice)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:2] + bytes(20) + frame[22:]])  # the frame header overwritten
    expected = (r"^DICOM file bad\.dcm uses JPEG Lossless, .*\(1\.2\.840\.10008\.1\.2\.4\.70\), "
                r"and its pixel data could not be decoded with the installed plugins")
    with pytest.raises(InputError, match=expected) as err:
        check_decodable(ds, "bad.dcm")
    assert "\n" not in str(err.value) and "pip install pylibjpeg pylibjpeg-libjpeg" in str(err.value)


def test_syntax_without_any_decoder_is_refused(originals):
    ds = pydicom.dcmread(originals[1]["unsigned"][0])
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3"])
    with pytest.raises(InputError, match=r"uses MPEG2 Main Profile / Main Level \(1\.2\.840\.10008\.1\.2\.4\.100\), "
                                         r"which pydicom cannot decode"):
        check_decodable(ds, "x.dcm")
    ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.9.9999.1"  # a private one
    with pytest.raises(InputError, match=r"uses an unknown transfer syntax \(1\.2\.826\.0\.1\.3680043\.9\.9999\.1\)"):
        check_decodable(ds, "x.dcm")


def test_uncompressed_and_pixelless_datasets_pass(originals):
    ds = pydicom.dcmread(originals[1]["unsigned"][0])
    assert check_decodable(ds, "x.dcm") is None
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = RLELossless
    assert check_decodable(ds, "x.dcm") is None


def test_describe_transfer_syntax():
    assert describe_transfer_syntax("1.2.840.10008.1.2.4.57") == \
        "JPEG Lossless, Non-Hierarchical (Process 14) (1.2.840.10008.1.2.4.57)"
    assert describe_transfer_syntax(RLELossless) == "RLE Lossless (1.2.840.10008.1.2.5)"
    assert describe_transfer_syntax("1.2.3.4") == "an unknown transfer syntax (1.2.3.4)"


def test_preflight_refuses_an_undecodable_series(originals, tmp_path, monkeypatch):
    """The apps' pre-flight check (not the SDK, late, with "Failed to apply rescale") names the syntax and the
    package to install."""
    pytest.importorskip("gdcm")
    folder = tmp_path / "sv1"
    encode_series(originals[1]["unsigned"], folder, "jpeg-lossless-sv1")
    assert check_dicom_input(folder)["num_slices"] == 6  # decodable with the deploy extra
    monkeypatch.setattr(get_decoder(JPEGLosslessSV1), "_available", {})
    with pytest.raises(InputError, match="JPEG Lossless.*1.2.840.10008.1.2.4.70.*pip install pylibjpeg"):
        check_dicom_input(folder)

