"""Reading and writing head X-rays in one convention.

Every image, whatever its format, loads as a ``float32`` array of shape ``(rows, cols)`` in the
orientation it is displayed in (x = column, y = row), intensities in ``[0, 1]`` with bright = dense
(MONOCHROME2). Integer pixels are divided by the full range of their stored bit depth (8-bit PNG by
255, 16-bit PNG by 65535, DICOM by ``2**BitsStored - 1``); signed or floating-point pixels are
min-max scaled. DICOM MONOCHROME1 is inverted. 2D NIfTI stores axis 0 = x (column) and axis 1 = y
(row), the ITK/MONAI convention, and is transposed on load.

``XrayReader`` plugs the same loader into MONAI's ``LoadImage``/``LoadImaged``. It copies no DICOM
header field into the metadata, so patient names and IDs never reach logs or outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys

DICOM_SUFFIXES = (".dcm", ".dicom")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
SUFFIXES = DICOM_SUFFIXES + PIL_SUFFIXES + NIFTI_SUFFIXES
KINDS = ("png8", "png16", "dcm", "dcm_mono1", "dcm_rle", "nii")


class XrayReadError(ValueError):
    """An image file that cannot be used: the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _scale_integer(arr: np.ndarray, bits: int) -> np.ndarray:
    return arr.astype(np.float32) / float(2**bits - 1)


def _min_max(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo)


def _to_gray(arr: np.ndarray, path: Path) -> np.ndarray:
    """Squeeze a 2D image out of gray, RGB(A) or single-slice arrays."""
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.float32)
        gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return gray.astype(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else gray
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise XrayReadError(path, f"expected a 2D image, got an array of shape {tuple(arr.shape)}")
    return arr


def _load_dicom(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, force=True)
    except (InvalidDicomError, OSError, ValueError) as err:
        raise XrayReadError(path, f"not a readable DICOM file ({err})") from err
    if "PixelData" not in ds:
        raise XrayReadError(path, "DICOM file has no pixel data")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise XrayReadError(path, f"multi-frame DICOM ({ds.NumberOfFrames} frames); expected one 2D image")
    try:
        arr = ds.pixel_array
    except Exception as err:  # pydicom raises many types for truncated/undecodable data
        raise XrayReadError(path, f"cannot decode DICOM pixel data ({type(err).__name__}: {err})") from err
    if getattr(ds, "SamplesPerPixel", 1) == 3:
        from pydicom.pixels import convert_color_space

        if str(ds.get("PhotometricInterpretation", "RGB")).startswith("YBR"):
            arr = convert_color_space(arr, ds.PhotometricInterpretation, "RGB")
    arr = _to_gray(arr, path)
    bits = int(ds.get("BitsStored", 8 * arr.dtype.itemsize))
    if np.issubdtype(arr.dtype, np.unsignedinteger) and bits <= 8 * arr.dtype.itemsize:
        img = np.clip(_scale_integer(arr, bits), 0.0, 1.0)
    else:
        img = _min_max(arr)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        img = 1.0 - img
    return img


def _load_pil(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except ImportError as err:  # Pillow tried a plugin registered but not installed (Ultralytics' HEIF opener)
        raise XrayReadError(path, "not a readable image file (no installed image decoder recognises it)") from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise XrayReadError(path, f"not a readable image file ({type(err).__name__}: {err})") from err
    arr = _to_gray(arr, path)
    if mode.startswith("I;16") or arr.dtype == np.uint16:
        return _scale_integer(arr, 16)
    if arr.dtype == np.uint8 or arr.dtype == bool:
        return _scale_integer(arr.astype(np.uint8), 8)
    return _min_max(arr)


def _load_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        arr = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as err:  # nibabel raises ImageFileError, EOFError, zlib errors...
        raise XrayReadError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from err
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise XrayReadError(path, f"expected a 2D NIfTI image, got shape {tuple(arr.shape)}")
    arr = arr.T  # stored (x, y) -> displayed (row, col)
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        return _scale_integer(arr, 8 * arr.dtype.itemsize)
    if np.issubdtype(arr.dtype, np.floating) and arr.min() >= 0.0 and arr.max() <= 1.0:
        return arr.astype(np.float32)
    return _min_max(arr)


def load_xray(path: str | Path) -> np.ndarray:
    """Load one X-ray as ``float32`` ``(rows, cols)`` in ``[0, 1]``; raise ``XrayReadError`` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise XrayReadError(path, "file not found")
    if path.stat().st_size == 0:
        raise XrayReadError(path, "file is empty (0 bytes)")
    suffix = _suffix(path)
    if suffix in DICOM_SUFFIXES or (suffix not in SUFFIXES and _is_dicom(path)):
        img = _load_dicom(path)
    elif suffix in NIFTI_SUFFIXES:
        img = _load_nifti(path)
    elif suffix in PIL_SUFFIXES:
        img = _load_pil(path)
    else:
        raise XrayReadError(path, f"unsupported file type '{suffix}' (expected one of {', '.join(SUFFIXES)})")
    if min(img.shape) < 16:
        raise XrayReadError(path, f"image too small ({img.shape[0]}x{img.shape[1]} pixels)")
    if not np.isfinite(img).all():
        raise XrayReadError(path, "image contains NaN or infinite values")
    if float(img.max()) == float(img.min()):
        raise XrayReadError(path, "image is blank (every pixel has the same value)")
    return np.ascontiguousarray(img, dtype=np.float32)


def _dicom_dataset(image01: np.ndarray, monochrome1: bool):
    """A minimal, anonymous Digital X-Ray DICOM dataset holding ``image01`` as 16-bit (12 stored)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.round(np.clip(image01, 0, 1) * 4095).astype(np.uint16)
    if monochrome1:
        pixels = 4095 - pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image for Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientName = "PHANTOM^SYNTHETIC"
    ds.PatientID = "PHANTOM"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    return ds


def save_xray(path: str | Path, image01: np.ndarray, kind: str) -> Path:
    """Write a ``(rows, cols)`` image in ``[0, 1]`` as ``kind`` (one of ``KINDS``); return the final path.

    The suffix is chosen from ``kind`` (``path``'s own suffix is replaced).
    """
    from PIL import Image

    path = Path(path)
    stem = path.name.split(".")[0]
    image01 = np.clip(np.asarray(image01, dtype=np.float32), 0.0, 1.0)
    if kind == "png8":
        out = path.with_name(stem + ".png")
        Image.fromarray(np.round(image01 * 255).astype(np.uint8)).save(out)
    elif kind == "png16":
        out = path.with_name(stem + ".png")
        Image.fromarray(np.round(image01 * 65535).astype(np.uint16)).save(out)
    elif kind in ("dcm", "dcm_mono1", "dcm_rle"):
        out = path.with_name(stem + ".dcm")
        ds = _dicom_dataset(image01, monochrome1=kind == "dcm_mono1")
        if kind == "dcm_rle":
            from pydicom.uid import RLELossless

            ds.compress(RLELossless, encoding_plugin="pydicom")
        ds.save_as(out, enforce_file_format=True)
    elif kind == "nii":
        import nibabel as nib

        out = path.with_name(stem + ".nii.gz")
        nib.save(nib.Nifti1Image(image01.T.copy(), np.eye(4)), str(out))
    else:
        raise ValueError(f"unknown image kind '{kind}' (expected one of {', '.join(KINDS)})")
    return out


class XrayReader(ImageReader):
    """MONAI ``ImageReader`` for DICOM, PNG/JPEG and 2D NIfTI X-rays, using ``load_xray``'s convention.

    ``get_data`` returns ``(rows, cols)`` float32 arrays in [0, 1] with an identity affine (pixel
    spacing 1), so spatial axis 0 is y (row) and axis 1 is x (column).
    """

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        names = [filename] if isinstance(filename, (str, Path)) else list(filename)
        return all(_suffix(Path(n)) in SUFFIXES for n in names)

    def read(self, data: Sequence[str] | str, **kwargs: Any) -> list[tuple[str, np.ndarray]]:
        names = [data] if isinstance(data, (str, Path)) else list(data)
        return [(str(n), load_xray(n)) for n in names]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        items = img if isinstance(img, list) else [img]
        if len(items) != 1:
            raise ValueError("XrayReader reads one image at a time")
        name, arr = items[0]
        meta = {
            MetaKeys.AFFINE: np.eye(3),
            MetaKeys.ORIGINAL_AFFINE: np.eye(3),
            MetaKeys.SPATIAL_SHAPE: np.asarray(arr.shape),
            MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel",
            "filename_or_obj": name,
        }
        return arr, meta
