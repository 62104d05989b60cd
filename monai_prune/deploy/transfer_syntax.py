"""Can the pixel data of a compressed DICOM file be decoded here, and if not, which package is missing.

pydicom decodes compressed pixel data only through plugins that live in other packages (pylibjpeg and its
libjpeg/openjpeg/rle back-ends, pyjpegls, python-gdcm, Pillow). Without them the MONAI Deploy SDK fails late, on
the first slice, with "Failed to apply rescale to DICOM volume", and the real cause is only in a log line (issue 17).
:func:`check_decodable` decodes the first frame of one file before the app starts and, when that is impossible,
raises one line that names the file, the transfer syntax and the packages to install.

JPEG Lossless (Process 14, and its Selection Value 1 variant, the most common lossless syntax in PACS exports)
needs pylibjpeg + pylibjpeg-libjpeg or python-gdcm; ``pip install 'monai-prune[deploy]'`` installs them.
"""

from __future__ import annotations

from typing import Dict, Tuple

from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    HTJ2K,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    UID,
)

from ..errors import InputError

__all__ = ["TRANSFER_SYNTAX_PACKAGES", "check_decodable", "describe_transfer_syntax"]

_LIBJPEG = ("pylibjpeg", "pylibjpeg-libjpeg")
_OPENJPEG = ("pylibjpeg", "pylibjpeg-openjpeg")
_GDCM = ("python-gdcm",)

# Transfer syntax UID -> the pip packages that let pydicom decode it: alternatives, the first one recommended.
# RLE Lossless needs nothing (pydicom decodes it itself); pylibjpeg-rle only makes it faster.
TRANSFER_SYNTAX_PACKAGES: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    JPEGBaseline8Bit: (_LIBJPEG, _GDCM, ("pillow",)),
    JPEGExtended12Bit: (_LIBJPEG, _GDCM),
    JPEGLossless: (_LIBJPEG, _GDCM),
    JPEGLosslessSV1: (_LIBJPEG, _GDCM),
    JPEGLSLossless: (("pyjpegls",), _LIBJPEG, _GDCM),
    JPEGLSNearLossless: (("pyjpegls",), _LIBJPEG, _GDCM),
    JPEG2000Lossless: (_OPENJPEG, _GDCM),
    JPEG2000: (_OPENJPEG, _GDCM),
    HTJ2KLossless: (_OPENJPEG,),
    HTJ2KLosslessRPCL: (_OPENJPEG,),
    HTJ2K: (_OPENJPEG,),
    RLELossless: (("pylibjpeg", "pylibjpeg-rle"),),
}


def describe_transfer_syntax(uid) -> str:
    """``"JPEG Lossless, Non-Hierarchical (Process 14) (1.2.840.10008.1.2.4.57)"``: the DICOM name and the UID."""
    uid = UID(str(uid).strip())
    name = uid.name if uid.is_transfer_syntax else ""
    if not name or name == str(uid):  # pydicom names a UID it does not know by the UID itself
        return f"an unknown transfer syntax ({uid})"
    return f"{name} ({uid})"


def _install_hint(uid: UID) -> str:
    """``"pip install pylibjpeg pylibjpeg-libjpeg (or python-gdcm)"``, from the table or from pydicom's own list."""
    choices = TRANSFER_SYNTAX_PACKAGES.get(uid)
    if choices:
        first, others = choices[0], [" ".join(c) for c in choices[1:]]
        return f"pip install {' '.join(first)}" + (f" (or {', or '.join(others)})" if others else "")
    missing = "; ".join(get_decoder(uid).missing_dependencies)
    return f"install a pydicom decoding plugin for it ({missing})" if missing else "install a pydicom decoding plugin"


# pydicom lists every plugin's failure; a message stays one readable line.
MAX_REASON = 300


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def check_decodable(ds: Dataset, path_name: str) -> None:
    """Raise :class:`~monai_prune.errors.InputError` unless pydicom can decode the pixel data of ``ds`` here.

    Uncompressed (and deflated) pixel data and datasets without pixel data pass without work. For a compressed
    transfer syntax the first frame is decoded (with the plugins pydicom found; nothing is kept on ``ds``), so a
    missing plugin and a plugin that cannot handle this file (bit depth, damaged codestream) both show here,
    before the MONAI Deploy SDK reads the series.

    Args:
        ds: a dataset read with its pixel data (``pydicom.dcmread(path)``).
        path_name: how to name the file in the message (e.g. ``"slice_0001.dcm in /data/ct"``).

    Raises:
        InputError: one line naming the file, the transfer syntax (name and UID) and the packages to install.
    """
    file_meta = getattr(ds, "file_meta", None)
    if "PixelData" not in ds or file_meta is None or "TransferSyntaxUID" not in file_meta:
        return
    uid = UID(str(file_meta.TransferSyntaxUID).strip())
    if uid.is_transfer_syntax and not uid.is_compressed:  # a private or unknown syntax has no decoder: refused below
        return
    prefix = f"DICOM file {path_name} uses {describe_transfer_syntax(uid)}"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise InputError(f"{prefix}, which pydicom cannot decode (no decoder exists for it): convert the series to "
                         "an uncompressed transfer syntax (e.g. gdcmconv --raw, dcmdjpeg) and run again.") from None
    if not decoder.is_available:
        raise InputError(f"{prefix}, which cannot be decoded here: {_install_hint(uid)}.")
    try:
        decoder.as_array(ds, index=0)  # the first frame only; does not cache an array on ds like ds.pixel_array
    except Exception as err:  # every plugin failed: a damaged codestream or an encoding the plugins do not support
        tried = ", ".join(decoder.available_plugins)
        raise InputError(f"{prefix}, and its pixel data could not be decoded with the installed plugins ({tried}): "
                         f"{_one_line(err)[:MAX_REASON]}. The file may be damaged: re-export the series, or add a "
                         f"decoder that is not installed yet: {_install_hint(uid)}.") from None
