"""Re-encode a synthetic CT series in compressed transfer syntaxes, offline, with packages from PyPI.

pydicom 3 encodes RLE Lossless itself, JPEG-LS through pyjpegls and JPEG 2000 through pylibjpeg-openjpeg. No pydicom
plugin encodes JPEG Lossless (Process 14 or its Selection Value 1 variant): GDCM (python-gdcm, in the deploy extra)
does, with ``gdcm.ImageChangeTransferSyntax``, always with predictor 1 (selection value 1) in both syntaxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pydicom
from pydicom import uid


def ct_volume(shape=(64, 64, 6), seed=0) -> np.ndarray:
    """HU ``(x, y, z)`` of a CT-like phantom: air, soft tissue, a lung, a bone that grows along z, scanner noise."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    hu = np.full(shape, -1000.0)
    hu[(x / 0.9) ** 2 + (y / 0.7) ** 2 < 1] = 40.0
    hu[((x + 0.4) / 0.25) ** 2 + (y / 0.35) ** 2 < 1] = -850.0
    hu[(x - 0.35) ** 2 + (y + 0.1) ** 2 < 0.15 ** 2 + 0.01 * (z + 1)] = 900.0
    hu += np.random.RandomState(seed).normal(0, 15, shape)
    return np.clip(np.round(hu), -1024, 3071)


def _pydicom_encoder(syntax: str, **kwargs) -> Callable[[Path, Path], None]:
    def encode(src: Path, dst: Path) -> None:
        ds = pydicom.dcmread(src)
        ds.compress(syntax, **kwargs)
        ds.save_as(dst, enforce_file_format=True)
    return encode


def _gdcm_encoder(gdcm_syntax: str) -> Callable[[Path, Path], None]:
    def encode(src: Path, dst: Path) -> None:
        import gdcm

        reader = gdcm.ImageReader()
        reader.SetFileName(str(src))
        if not reader.Read():
            raise RuntimeError(f"GDCM could not read {src}")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, gdcm_syntax)))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError(f"GDCM could not encode {src} as {gdcm_syntax}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(dst))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError(f"GDCM could not write {dst}")
    return encode


@dataclass
class Encoding:
    """A transfer syntax, how to write it here, the module that encoder needs, and the largest error it may make."""
    syntax: str
    encode: Callable[[Path, Path], None]
    needs: str = "pydicom"
    max_error: float = 0.0  # in stored values; 0 for lossless syntaxes
    lossy: bool = field(init=False)

    def __post_init__(self):
        self.lossy = self.max_error > 0


# JPEG-LS near-lossless guarantees |error| <= NEAR; lossy JPEG 2000 at compression ratio 4 gave at most 28 stored
# values (6.7 RMS) on this phantom: the bound leaves room for other openjpeg versions.
JLS_NEAR = 3
ENCODINGS: Dict[str, Encoding] = {
    "rle": Encoding(uid.RLELossless, _pydicom_encoder(uid.RLELossless)),
    "jpeg-ls": Encoding(uid.JPEGLSLossless, _pydicom_encoder(uid.JPEGLSLossless), needs="jpeg_ls"),
    "jpeg-ls-near": Encoding(uid.JPEGLSNearLossless, _pydicom_encoder(uid.JPEGLSNearLossless, jls_error=JLS_NEAR),
                             needs="jpeg_ls", max_error=JLS_NEAR),
    "jpeg2000": Encoding(uid.JPEG2000Lossless, _pydicom_encoder(uid.JPEG2000Lossless), needs="openjpeg"),
    "jpeg2000-lossy": Encoding(uid.JPEG2000, _pydicom_encoder(uid.JPEG2000, j2k_cr=[4]), needs="openjpeg",
                               max_error=60),
    "jpeg-lossless-p14": Encoding(uid.JPEGLossless, _gdcm_encoder("JPEGLosslessProcess14"), needs="gdcm"),
    "jpeg-lossless-sv1": Encoding(uid.JPEGLosslessSV1, _gdcm_encoder("JPEGLosslessProcess14_1"), needs="gdcm"),
}


def encode_series(paths: List[str], out_dir: Path, name: str) -> List[str]:
    """Each file of ``paths`` re-encoded as ``ENCODINGS[name]`` into ``out_dir`` (same names, same UIDs)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        dst = out_dir / Path(path).name
        ENCODINGS[name].encode(Path(path), dst)
        written.append(str(dst))
    return written
