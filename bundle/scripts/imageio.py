"""Reading and writing head X-rays in one convention.

Every image, whatever its format, loads as a ``float32`` array of shape ``(rows, cols)`` in the
orientation it is displayed in (x = column, y = row), intensities in ``[0, 1]`` with bright = dense
(MONOCHROME2). 2D NIfTI stores axis 0 = x (column) and axis 1 = y (row), the ITK/MONAI convention, and is
transposed on load.

Intensities (``intensity="window"``, the default, for every X-ray) do not depend on the container: the
pixel values (DICOM: after its Modality LUT, i.e. ``RescaleSlope``/``RescaleIntercept``) are mapped to [0, 1]
by the image's own robust window, its ``WINDOW_PERCENTILES`` (0.5th to 99.5th percentile), clipped; DICOM
MONOCHROME1 is then inverted. The bit depth of the file (a 12-bit image in a 16-bit PNG, ``BitsStored``), the
stored range, a rescale and the exposure therefore do not change what the networks see. A DICOM VOI LUT or
window (``WindowCenter``/``WindowWidth``) is a display setting that differs between exports of the same image
and is not applied. ``intensity="stored"`` divides integers by their container's range instead (8-bit by
255, 16-bit by 65535): how the bundle reads back its own [0, 1] files (the crops that ``save_xray`` wrote).

A file is DICOM when it has DICOM's ``DICM`` preamble at byte 128, whatever its name (PACS exports are often
named by UID, ``1.2.840....123``), or a ``.dcm``/``.dicom`` suffix; other formats go by suffix. Colour images are
converted to gray (ITU-R 601 luma) from the RGB that Pillow and pydicom decode. Images above ``max_pixels`` are
refused from their header, before any pixel is decoded. Every problem raises ``XrayReadError``, one line naming
the file, and no other exception type.

``XrayReader`` plugs the same loader into MONAI's ``LoadImage``/``LoadImaged``; ``LoadXrayd`` is ``LoadImaged`` with
``XrayReader`` alone. Neither copies a DICOM header field into the metadata, so patient names and IDs never reach
logs or outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import ImageReader
from monai.transforms import LoadImaged
from monai.utils import MetaKeys

DICOM_SUFFIXES = (".dcm", ".dicom")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
SUFFIXES = DICOM_SUFFIXES + PIL_SUFFIXES + NIFTI_SUFFIXES
KINDS = ("png8", "png16", "png16_12bit", "jpeg", "dcm", "dcm_mono1", "dcm_rle", "nii")
INTENSITY = ("window", "stored")  # load_xray's intensity conventions (see the module docstring)
WINDOW_PERCENTILES = (0.5, 99.5)
# part of the dataset fingerprint: crops, splits and weights made under another convention are made again
INTENSITY_CONVENTION = "window p0.5-p99.5 after the modality LUT, MONOCHROME1 inverted, VOI not applied"
_WINDOW_SAMPLES = 1_000_000  # the percentiles of a large image are taken on a regular subsample of this many
DEFAULT_MAX_PIXELS = 40_000_000  # 40 megapixels; a 43 cm flat-panel detector at 0.1 mm gives about 18
MAX_MESSAGE = 400  # characters of an error message kept (decoders can list every plugin they tried)


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line (each run of whitespace, newlines included, becomes one space), cut to ``limit`` chars."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class XrayReadError(ValueError):
    """An image file that cannot be used: the one-line message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = one_line(problem)
        super().__init__(f"{self.path}: {self.problem}")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_dicom(path: str | Path) -> bool:
    """True if the file has DICOM's preamble (``DICM`` at byte 128), whatever its name; ``OSError`` if unreadable."""
    from pydicom.misc import is_dicom as has_dicom_preamble

    return has_dicom_preamble(path)


def image_format(path: str | Path) -> str | None:
    """``"dicom"`` (preamble or suffix), ``"nifti"`` or ``"pil"`` (suffix), or None; ``OSError`` if unreadable."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix in DICOM_SUFFIXES or is_dicom(path):
        return "dicom"
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    return "pil" if suffix in PIL_SUFFIXES else None


def _check_pixels(path: Path, rows: int, cols: int, max_pixels: int | None) -> None:
    """Refuse an image of more than ``max_pixels`` pixels (None or 0: no limit), from its header's size."""
    rows, cols = int(rows), int(cols)
    if max_pixels and rows * cols > max_pixels:
        megapixels = rows * cols / 1e6
        raise XrayReadError(
            path, f"image too large ({rows}x{cols} = {megapixels:.1f} megapixels; the limit is max_pixels={max_pixels})"
        )


def _scale_integer(arr: np.ndarray, bits: int) -> np.ndarray:
    return arr.astype(np.float32) / float(2**bits - 1)


def _min_max(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return np.zeros_like(arr) if hi == lo else (arr - lo) / (hi - lo)


def robust_window(values: np.ndarray, percentiles: tuple[float, float] = WINDOW_PERCENTILES) -> np.ndarray:
    """``values`` mapped to [0, 1] by their own ``percentiles`` (low -> 0, high -> 1, clipped); min-max if those
    coincide (an image that is mostly one value)."""
    values = np.asarray(values, dtype=np.float32)
    step = max(1, int(np.sqrt(values.size / _WINDOW_SAMPLES)))
    sample = values[::step, ::step] if values.ndim == 2 else values.ravel()[:: step * step]
    lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros_like(values)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


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


def _load_dicom(path: Path, max_pixels: int | None, intensity: str = "window") -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:  # pixel data over 1 MB stays on disk until decoded, i.e. after the size check
        ds = pydicom.dcmread(path, force=True, defer_size="1 MB")
    except Exception as err:  # pydicom raises many types on malformed files
        raise XrayReadError(path, f"not a readable DICOM file ({type(err).__name__}: {err})") from err
    if "PixelData" not in ds:
        raise XrayReadError(path, "DICOM file has no pixel data")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise XrayReadError(path, f"multi-frame DICOM ({ds.NumberOfFrames} frames); expected one 2D image")
    _check_pixels(path, ds.get("Rows") or 0, ds.get("Columns") or 0, max_pixels)
    try:
        arr = ds.pixel_array  # pydicom 3 returns colour (YBR_* included) as RGB: no conversion here
    except Exception as err:  # pydicom raises many types for truncated/undecodable data
        raise XrayReadError(path, f"cannot decode DICOM pixel data ({type(err).__name__}: {err})") from err
    arr = _to_gray(arr, path)
    if intensity == "window":
        if int(ds.get("SamplesPerPixel", 1) or 1) == 1:
            arr = apply_modality_lut(arr, ds)  # stored values -> modality values (rescale slope/intercept, LUT)
        img = robust_window(arr)
    else:
        bits = int(ds.get("BitsStored", 8 * arr.dtype.itemsize))
        if np.issubdtype(arr.dtype, np.unsignedinteger) and bits <= 8 * arr.dtype.itemsize:
            img = np.clip(_scale_integer(arr, bits), 0.0, 1.0)
        else:
            img = _min_max(arr)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        img = 1.0 - img
    return img


def _pil_pixels(path: Path, max_pixels: int | None) -> tuple[np.ndarray, str]:
    """The first frame's pixels and Pillow mode; palette, CMYK and the other colour modes as RGB."""
    from PIL import Image

    with Image.open(path) as im:
        _check_pixels(path, im.height, im.width, max_pixels)
        if im.mode not in ("1", "L", "I", "F", "RGB", "RGBA") and not im.mode.startswith("I;16"):
            im = im.convert("RGB")
        im.load()
        return np.asarray(im), im.mode


def _load_pil(path: Path, max_pixels: int | None, intensity: str = "window") -> np.ndarray:
    from PIL import Image

    try:
        arr, mode = _pil_pixels(path, max_pixels)
    except XrayReadError:
        raise
    except Image.DecompressionBombError as err:  # Pillow's own limit, checked when the file is opened
        raise XrayReadError(path, f"image too large ({err})") from err
    except ImportError as err:  # Pillow tried a plugin registered but not installed (Ultralytics' HEIF opener)
        raise XrayReadError(path, "not a readable image file (no installed image decoder recognises it)") from err
    except Exception as err:  # Pillow raises many types on malformed files
        raise XrayReadError(path, f"not a readable image file ({type(err).__name__}: {err})") from err
    arr = _to_gray(arr, path)
    if intensity == "window":
        return robust_window(arr)
    if mode.startswith("I;16") or arr.dtype == np.uint16:
        return _scale_integer(arr, 16)
    if arr.dtype == np.uint8 or arr.dtype == bool:
        return _scale_integer(arr.astype(np.uint8), 8)
    return _min_max(arr)


def _load_nifti(path: Path, max_pixels: int | None, intensity: str = "window") -> np.ndarray:
    import nibabel as nib

    try:
        nii = nib.load(str(path))
        shape = tuple(int(n) for n in nii.shape if n != 1)
    except Exception as err:  # nibabel raises ImageFileError, EOFError, zlib errors...
        raise XrayReadError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from err
    if len(shape) != 2:
        raise XrayReadError(path, f"expected a 2D NIfTI image, got shape {tuple(nii.shape)}")
    _check_pixels(path, shape[1], shape[0], max_pixels)  # stored (x, y), from the header
    try:
        arr = np.asanyarray(nii.dataobj)
    except Exception as err:  # truncated or corrupt data behind a readable header
        raise XrayReadError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from err
    arr = np.squeeze(arr).T  # stored (x, y) -> displayed (row, col)
    if intensity == "window":
        return robust_window(arr)
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        return _scale_integer(arr, 8 * arr.dtype.itemsize)
    if np.issubdtype(arr.dtype, np.floating) and arr.min() >= 0.0 and arr.max() <= 1.0:
        return arr.astype(np.float32)
    return _min_max(arr)


LOADERS = {"dicom": _load_dicom, "nifti": _load_nifti, "pil": _load_pil}


def _read(path: Path, max_pixels: int | None, intensity: str = "window") -> np.ndarray:
    if not path.is_file():
        raise XrayReadError(path, "file not found")
    if path.stat().st_size == 0:
        raise XrayReadError(path, "file is empty (0 bytes)")
    kind = image_format(path)
    if kind is None:
        expected = ", ".join(SUFFIXES)
        raise XrayReadError(path, f"unsupported file type '{_suffix(path)}' (expected DICOM or one of {expected})")
    return LOADERS[kind](path, max_pixels, intensity)


def _check_image(img: np.ndarray, path: Path) -> None:
    if min(img.shape) < 16:
        raise XrayReadError(path, f"image too small ({img.shape[0]}x{img.shape[1]} pixels)")
    if not np.isfinite(img).all():
        raise XrayReadError(path, "image contains NaN or infinite values")
    if float(img.max()) == float(img.min()):
        raise XrayReadError(path, "image is blank (every pixel has the same value)")


def load_xray(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS, intensity: str = "window") -> np.ndarray:
    """Load one X-ray as ``float32`` ``(rows, cols)`` in ``[0, 1]``; raise ``XrayReadError`` (only) if unusable.

    ``max_pixels`` (None or 0: no limit) refuses a larger image from its header, before decoding it.
    ``intensity``: ``"window"`` (X-rays: the image's robust window) or ``"stored"`` (the bundle's own files).
    """
    if intensity not in INTENSITY:
        raise ValueError(f"intensity must be one of {INTENSITY}, got {intensity!r}")
    path = Path(path)
    try:
        img = _read(path, max_pixels, intensity)
        _check_image(img, path)
    except XrayReadError:
        raise
    except MemoryError as err:
        raise XrayReadError(path, "not enough memory to decode the image") from err
    except Exception as err:  # unreadable file (OSError) or a decoder's unexpected failure: still one error type
        raise XrayReadError(path, f"cannot read the image ({type(err).__name__}: {err})") from err
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
    elif kind in ("png16", "png16_12bit"):  # full 16-bit range, or 12-bit values (0..4095) as many exports hold
        out = path.with_name(stem + ".png")
        top = 65535 if kind == "png16" else 4095
        Image.fromarray(np.round(image01 * top).astype(np.uint16)).save(out)
    elif kind == "jpeg":
        out = path.with_name(stem + ".jpg")
        Image.fromarray(np.round(image01 * 255).astype(np.uint8)).save(out, quality=95)
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
    spacing 1), so spatial axis 0 is y (row) and axis 1 is x (column). ``max_pixels`` and ``intensity`` as in
    ``load_xray`` (``intensity="stored"`` for the crops the bundle wrote itself).
    """

    def __init__(self, max_pixels: int | None = DEFAULT_MAX_PIXELS, intensity: str = "window") -> None:
        super().__init__()
        if intensity not in INTENSITY:
            raise ValueError(f"intensity must be one of {INTENSITY}, got {intensity!r}")
        self.max_pixels, self.intensity = max_pixels, intensity

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        names = [filename] if isinstance(filename, (str, Path)) else list(filename)
        return all(_known_format(Path(n)) for n in names)

    def read(self, data: Sequence[str] | str, **kwargs: Any) -> list[tuple[str, np.ndarray]]:
        names = [data] if isinstance(data, (str, Path)) else list(data)
        return [(str(n), load_xray(n, self.max_pixels, self.intensity)) for n in names]

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


def _known_format(path: Path) -> bool:
    try:
        return image_format(path) is not None
    except OSError:  # cannot be opened to look for the DICOM preamble
        return False


class LoadXrayd(LoadImaged):
    """``LoadImaged`` with ``XrayReader`` alone, so a bad file raises its own ``XrayReadError``.

    MONAI's ``LoadImage`` tries every other installed reader after a given one fails, which would decode an image
    that ``max_pixels`` refused and bury the diagnosis in a list of tracebacks.
    """

    def __init__(
        self,
        keys: KeysCollection,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        intensity: str = "window",
        **kwargs: Any,
    ) -> None:
        self.xray_reader = XrayReader(max_pixels, intensity)
        super().__init__(keys, reader=self.xray_reader, **kwargs)

    def __call__(self, data: Any, reader: ImageReader | None = None) -> dict:
        return super().__call__(data, reader or self.xray_reader)
