"""The storage format of an image file, named from its header as a user would name it (``file_format``).

Used to break evaluations down by format (``by_format`` in the detector's and the classifier's ``evaluation.json``),
so that a drop in one kind of export shows. Only headers are read, except that a gray 16-bit PNG is decoded to tell
a 12-bit image in it (``png16-12bit``: every value up to 4095, a common PACS/research export). The names:

================================  =================================================================================
name                              file
================================  =================================================================================
``png8``, ``png16`` (``png1``..)  PNG, gray, by its IHDR bit depth (``png16-12bit``: values up to 4095 only);
                                  ``-rgb`` colour, ``-palette`` palette colour
``jpeg``                          JPEG (``jpeg-rgb`` when it has colour channels)
``tiff8``, ``tiff16``, ``bmp8``   other Pillow formats: the format and bits a sample, ``-rgb``/``-palette`` as PNG
``dicom12``, ``dicom16``...       DICOM, by ``BitsStored``; then ``-mono1`` for MONOCHROME1, ``-rgb`` for colour
                                  (``SamplesPerPixel`` > 1), ``-palette`` for PALETTE COLOR; then the transfer
                                  syntax when it compresses: ``-rle``, ``-jpeg`` (baseline or extended),
                                  ``-jpegll`` (JPEG lossless), ``-jpegls`` (JPEG-LS), ``-j2k`` (JPEG 2000),
                                  ``-htj2k`` (High-Throughput JPEG 2000), ``-deflate``, ``-compressed`` (other)
``nifti-float``                   NIfTI with floating-point voxels (any width)
``nifti-int16``, ``nifti-uint8``  NIfTI with integer voxels: ``nifti-`` and the numpy name of the header's dtype
anything else                     the lower-case suffix without its dot (``nii.gz``, ``tif``), ``unknown`` if none
================================  =================================================================================

E.g. the phantom's kinds (``scripts.imageio.KINDS``): ``png8`` -> ``png8``, ``png16`` -> ``png16``, ``png16_12bit``
-> ``png16-12bit``, ``jpeg`` -> ``jpeg``, ``dcm`` -> ``dicom12``, ``dcm_mono1`` -> ``dicom12-mono1``, ``dcm_rle`` ->
``dicom12-rle``, ``nii`` -> ``nifti-float``. A file whose header cannot be read is named by its suffix (the
evaluation that asks has already loaded it).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .imageio import image_format

logger = logging.getLogger(__name__)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR = {0: "", 2: "-rgb", 3: "-palette", 4: "", 6: "-rgb"}  # IHDR colour type -> suffix (alpha ignored)
_PIL_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}  # mode -> bits (else 8)
_PIL_COLOUR = {"RGB": "-rgb", "RGBA": "-rgb", "RGBX": "-rgb", "CMYK": "-rgb", "YCbCr": "-rgb", "P": "-palette"}
_DICOM_COMPRESSION = {
    "1.2.840.10008.1.2.5": "rle",
    "1.2.840.10008.1.2.4.50": "jpeg",  # baseline (8 bit)
    "1.2.840.10008.1.2.4.51": "jpeg",  # extended (12 bit)
    "1.2.840.10008.1.2.4.57": "jpegll",
    "1.2.840.10008.1.2.4.70": "jpegll",  # lossless, first-order prediction (SV1)
    "1.2.840.10008.1.2.4.80": "jpegls",
    "1.2.840.10008.1.2.4.81": "jpegls",  # near-lossless
    "1.2.840.10008.1.2.4.90": "j2k",
    "1.2.840.10008.1.2.4.91": "j2k",
    "1.2.840.10008.1.2.4.92": "j2k",  # multi-component
    "1.2.840.10008.1.2.4.93": "j2k",
    "1.2.840.10008.1.2.4.201": "htj2k",
    "1.2.840.10008.1.2.4.202": "htj2k",
    "1.2.840.10008.1.2.4.203": "htj2k",
    "1.2.840.10008.1.2.1.99": "deflate",
}


def suffix_name(path: str | Path) -> str:
    """The lower-case suffix without its dot (``.nii.gz`` whole), or ``unknown``."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return "nii.gz"
    return Path(name).suffix.lstrip(".") or "unknown"


def file_format(path: str | Path) -> str:
    """The storage format of the image file at ``path`` (names in the module docstring), from its header only."""
    path = Path(path)
    try:
        kind = image_format(path)
        if kind == "dicom":
            return dicom_format(path)
        if kind == "nifti":
            return nifti_format(path)
        if kind == "pil":
            return pil_format(path)
    except Exception as err:  # unreadable header: the suffix still says something
        logger.debug("file_format: %s: %s: %s", path.name, type(err).__name__, err)
    return suffix_name(path)


def png_format(header: bytes) -> str | None:
    """``png<bits>[-rgb|-palette]`` from a PNG's first 26 bytes (signature and IHDR), None if not a PNG."""
    if len(header) < 26 or not header.startswith(_PNG_SIGNATURE) or header[12:16] != b"IHDR":
        return None
    return f"png{header[24]}{_PNG_COLOUR.get(header[25], '')}"


def _values_fit_12_bits(path: str | Path) -> bool:
    """Whether a gray 16-bit PNG holds only values up to 4095 (a 12-bit image in a 16-bit container): decodes it."""
    from PIL import Image

    with Image.open(path) as im:
        return int(np.asarray(im).max()) <= 4095


def pil_format(path: str | Path) -> str:
    """PNG from its IHDR; other formats from Pillow's lazily opened header (format, mode)."""
    with open(path, "rb") as f:
        name = png_format(f.read(26))
    if name == "png16" and _values_fit_12_bits(path):
        return "png16-12bit"
    if name:
        return name
    from PIL import Image

    with Image.open(path) as im:  # reads the header only
        fmt, mode = (im.format or suffix_name(path)).lower(), im.mode
    colour = _PIL_COLOUR.get(mode, "")
    if fmt in ("jpeg", "mpo"):  # a camera JPEG may open as MPO
        return f"jpeg{colour}"
    return f"{fmt}{_PIL_BITS.get(mode, 8)}{colour}"


def dicom_format(path: str | Path) -> str:
    """``dicom<BitsStored>`` with ``-mono1``/``-rgb``/``-palette`` and the compressing transfer syntax."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    bits = ds.get("BitsStored") or ds.get("BitsAllocated") or ""
    name = f"dicom{bits}"
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "MONOCHROME1":
        name += "-mono1"
    elif photometric == "PALETTE COLOR":
        name += "-palette"
    elif int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        name += "-rgb"
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None:
        compression = _DICOM_COMPRESSION.get(str(syntax))
        if compression is None and getattr(syntax, "is_compressed", False):
            compression = "compressed"
        if compression:
            name += f"-{compression}"
    return name


def nifti_format(path: str | Path) -> str:
    """``nifti-float`` or ``nifti-<integer dtype>`` from the header's data type."""
    import nibabel as nib

    dtype = np.dtype(nib.load(str(path)).header.get_data_dtype())
    return "nifti-float" if np.issubdtype(dtype, np.floating) else f"nifti-{dtype.name}"


__all__ = ["dicom_format", "file_format", "nifti_format", "pil_format", "png_format", "suffix_name"]
