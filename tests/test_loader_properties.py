"""Property-based tests of the loader: random bytes and random arrays, in every format and under any name.

Whatever the file holds, ``load_xray`` and ``XrayReader`` either return a float32 ``(rows, cols)`` image in [0, 1] or
raise ``XrayReadError`` (the documented error type, one line); no other exception ever comes out.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import hypothesis.extra.numpy as hnp
import nibabel as nib
import numpy as np
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    RLELossless,
)

from scripts.imageio import XrayReader, XrayReadError, load_xray

SETTINGS = settings(max_examples=80, deadline=None, database=None)  # no example database written into the repo
NAMES = ["x.dcm", "x.dicom", "x.png", "x.jpg", "x.tif", "x.bmp", "x.nii", "x.nii.gz", "1.2.840.10008.9.123", "IM0001"]
MAGIC = {
    "none": b"",
    "dicom": b"\0" * 128 + b"DICM",
    "png": b"\x89PNG\r\n\x1a\n",
    "jpeg": b"\xff\xd8\xff\xe0",
    "gzip": b"\x1f\x8b\x08",
    "nifti": (348).to_bytes(4, "little"),
}
DTYPES = {  # what each writer can store
    "pil": [np.uint8, np.uint16, np.int32, np.float32, np.bool_],
    "nifti": [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64],
    "dicom": [np.uint8, np.uint16, np.int16],  # uncompressed, gray; RGB as uint8
}
SYNTAXES = [ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSLossless, JPEG2000Lossless, RLELossless]


def _load_both(path: Path) -> list[np.ndarray]:
    """``load_xray`` and ``XrayReader`` on one file; each call either returns or raises ``XrayReadError``."""
    loaded = []
    for load in (load_xray, lambda p: XrayReader().get_data(XrayReader().read(str(p)))[0]):
        try:
            loaded.append(load(path))
            event("loaded")
        except XrayReadError as err:
            assert "\n" not in str(err) and path.name in str(err)
            event("refused: " + err.problem.split(" (")[0][:40])
    return loaded


def _check_loaded(images: list[np.ndarray]) -> None:
    for img in images:
        assert img.dtype == np.float32 and img.ndim == 2 and min(img.shape) >= 16
        assert np.isfinite(img).all() and 0.0 <= img.min() <= img.max() <= 1.0


@SETTINGS
@given(name=st.sampled_from(NAMES), magic=st.sampled_from(sorted(MAGIC)), body=st.binary(max_size=4096))
def test_random_bytes_raise_only_xray_read_error(name: str, magic: str, body: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(MAGIC[magic] + body)
        _check_loaded(_load_both(path))


def _save_pil(path: Path, arr: np.ndarray) -> Path:
    """PNG, or TIFF for what PNG cannot hold (32-bit integers and floats)."""
    out = path.with_suffix(".tif" if arr.dtype in (np.int32, np.float32) else ".png")
    Image.fromarray(arr).save(out)
    return out


def _save_nifti(path: Path, arr: np.ndarray) -> Path:
    out = path.with_name(path.name + ".nii.gz")
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(out))
    return out


def _save_dicom(path: Path, arr: np.ndarray) -> Path:
    """Uncompressed DICOM of a 2D gray or (rows, cols, 3) colour array; named by UID, no suffix."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    colour = arr.ndim == 3
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else ("MONOCHROME1" if arr.sum() % 2 else "MONOCHROME2")
    if colour:
        ds.PlanarConfiguration = 0
    bits = 8 * arr.dtype.itemsize
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = int(arr.dtype.kind == "i")
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    out = path.with_name(str(meta.MediaStorageSOPInstanceUID))
    ds.save_as(out, enforce_file_format=True)
    return out


SAVERS: dict[str, Callable[[Path, np.ndarray], Path]] = {"pil": _save_pil, "nifti": _save_nifti, "dicom": _save_dicom}
SHAPES = st.one_of(
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=12, max_side=48),  # images, some under 16 px
    st.tuples(st.integers(12, 48), st.integers(12, 48), st.sampled_from([1, 2, 3, 4])),  # channels last
    hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=20),  # anything else
)


def _arrays(kind: str) -> st.SearchStrategy[np.ndarray]:
    """Random arrays of the dtypes and shapes a ``kind`` file can hold (uncompressed DICOM: 8/16-bit, gray or RGB)."""
    if kind != "dicom":
        return st.sampled_from(DTYPES[kind]).flatmap(lambda dtype: hnp.arrays(dtype, SHAPES))
    gray = st.sampled_from(DTYPES["dicom"]).flatmap(
        lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=48))
    )
    return st.one_of(gray, hnp.arrays(np.uint8, st.tuples(st.integers(1, 48), st.integers(1, 48), st.just(3))))


@SETTINGS
@given(kind_arr=st.sampled_from(sorted(SAVERS)).flatmap(lambda kind: st.tuples(st.just(kind), _arrays(kind))))
def test_random_arrays_load_in_range_or_raise_xray_read_error(kind_arr: tuple[str, np.ndarray]) -> None:
    kind, arr = kind_arr
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = SAVERS[kind](Path(tmp) / "x", arr)
        except (TypeError, ValueError, OSError, KeyError, nib.spatialimages.HeaderDataError):
            assume(False)  # the writer cannot store this array (e.g. Pillow and a 3-D float32 array): nothing to load
        _check_loaded(_load_both(path))


def _pixel_data(draw: st.DrawFn, pixels: bytes) -> dict:
    """``pixels`` as native pixel data, or as the one fragment of a compressed transfer syntax (random: undecodable)."""
    syntax = draw(st.one_of(st.just(ExplicitVRLittleEndian), st.sampled_from(SYNTAXES)))  # native half the time
    pixels += b"\0" * (len(pixels) % 2 + 2 * (len(pixels) == 0))  # even length, as DICOM requires; fragments >= 2
    return {"TransferSyntaxUID": syntax, "PixelData": encapsulate([pixels]) if syntax.is_compressed else pixels}


@st.composite
def valid_headers(draw: st.DrawFn) -> dict:
    """A valid image description, and random pixel data of its size (compressed: random bytes of that size)."""
    samples, bits = draw(st.sampled_from([1, 3])), draw(st.sampled_from([8, 16]))
    colours = ["MONOCHROME1", "MONOCHROME2"] if samples == 1 else ["RGB", "YBR_FULL"]
    header = {
        "Rows": draw(st.integers(1, 64)),
        "Columns": draw(st.integers(1, 64)),
        "SamplesPerPixel": samples,
        "PhotometricInterpretation": draw(st.sampled_from(colours)),
        "BitsAllocated": bits,
        "BitsStored": (stored := draw(st.integers(1, bits))),
        "HighBit": stored - 1,
        "PixelRepresentation": draw(st.integers(0, 1)),
    }
    if samples == 3:
        header["PlanarConfiguration"] = draw(st.integers(0, 1))
    size = header["Rows"] * header["Columns"] * samples * bits // 8
    return {**header, **_pixel_data(draw, draw(st.binary(min_size=size, max_size=size)))}


@st.composite
def random_headers(draw: st.DrawFn) -> dict:
    """Image description values that need not be valid nor match the pixel data."""
    header = {
        "Rows": draw(st.one_of(st.integers(0, 64), st.integers(0, 65535))),
        "Columns": draw(st.one_of(st.integers(0, 64), st.integers(0, 65535))),
        "SamplesPerPixel": draw(st.integers(0, 4)),
        "PhotometricInterpretation": draw(
            st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR", ""])
        ),
        "BitsAllocated": draw(st.sampled_from([0, 1, 8, 12, 16, 32, 64])),
        "BitsStored": draw(st.integers(0, 40)),
        "HighBit": draw(st.integers(0, 40)),
        "PixelRepresentation": draw(st.integers(0, 2)),
        "NumberOfFrames": draw(st.sampled_from(["1", "2", "0", ""])),
    }
    return {**header, **_pixel_data(draw, draw(st.binary(max_size=6000)))}


@SETTINGS
@given(header=st.one_of(valid_headers(), random_headers()))
def test_dicom_header_values_raise_only_xray_read_error(header: dict) -> None:
    """A well-formed DICOM file whose image description is random, valid or not, and its pixel data random."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = header["TransferSyntaxUID"]
    ds = Dataset()
    ds.file_meta = meta
    for keyword, value in header.items():
        if keyword != "TransferSyntaxUID":
            setattr(ds, keyword, value)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "1.2.840.10008.9.456"
        ds.save_as(path, enforce_file_format=True)
        _check_loaded(_load_both(path))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_gray_png_keeps_the_intensity_convention(tmp_path: Path, dtype: type) -> None:
    """Not random: a full-range gray PNG divides by its bit depth's range (the convention the properties rely on)."""
    arr = np.linspace(0, np.iinfo(dtype).max, 32 * 32).astype(dtype).reshape(32, 32)
    Image.fromarray(arr).save(tmp_path / "g.png")
    np.testing.assert_allclose(load_xray(tmp_path / "g.png", intensity="stored"), arr / np.iinfo(dtype).max, atol=1e-6)
