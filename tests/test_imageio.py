"""Every supported format loads into one convention; bad files fail with the file and the problem named."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import EnsureChannelFirstd, LoadImaged
from PIL import Image
from pydicom.data import get_testdata_file

from scripts.imageio import KINDS, LoadXrayd, XrayReader, XrayReadError, load_xray, robust_window, save_xray

STORED = "stored"  # the container's range: these tests check decoding (the robust window: test_format_invariance.py)


def _gradient(h: int = 40, w: int = 60) -> np.ndarray:
    """A non-square test image whose value encodes position: row and column can be told apart."""
    yy, xx = np.mgrid[0:h, 0:w]
    return (0.7 * xx / (w - 1) + 0.3 * yy / (h - 1)).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_roundtrip_every_kind_keeps_orientation_and_range(tmp_path: Path, kind: str) -> None:
    """Every kind the bundle writes loads back upright as the image's robust window (lossless: within 8-bit
    quantisation; JPEG: on average)."""
    img = _gradient()
    path = save_xray(tmp_path / "x", img, kind)
    out = load_xray(path)
    assert out.shape == img.shape and out.dtype == np.float32
    expected = robust_window(img)
    if kind == "jpeg":
        assert np.abs(out - expected).mean() < 0.01
    else:
        np.testing.assert_allclose(out, expected, atol=0.01 if kind == "png8" else 0.002)


def test_monochrome1_is_inverted_to_bright_dense(tmp_path: Path) -> None:
    img = _gradient()
    ds = pydicom.dcmread(save_xray(tmp_path / "m1", img, "dcm_mono1"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert ds.pixel_array[0, -1] < ds.pixel_array[0, 0]  # stored inverted...
    assert load_xray(tmp_path / "m1.dcm")[0, -1] > load_xray(tmp_path / "m1.dcm")[0, 0]  # ...loaded upright


def test_rgb_and_16bit_png(tmp_path: Path) -> None:
    img = _gradient()
    rgb = np.repeat((img * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(load_xray(tmp_path / "rgb.png", intensity=STORED), img, atol=1.5 / 255)
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
    np.testing.assert_allclose(load_xray(tmp_path / "rgb.jpg", intensity=STORED), img, atol=6 / 255)


def test_nifti_axis_convention(tmp_path: Path) -> None:
    img = _gradient()
    nib.save(nib.Nifti1Image(img.T[:, :, None].copy(), np.eye(4)), str(tmp_path / "x.nii"))  # (x, y, 1)
    np.testing.assert_allclose(load_xray(tmp_path / "x.nii", intensity=STORED), img, atol=1e-6)


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "JPEG2000.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_jpeg.dcm",
    ],
)
def test_real_dicom_files_from_pydicom(name: str) -> None:
    path = get_testdata_file(name)
    out = load_xray(path, intensity=STORED)
    ref = pydicom.dcmread(path, force=True)
    assert out.shape == (ref.Rows, ref.Columns)
    assert 0.0 <= out.min() < out.max() <= 1.0


@pytest.mark.parametrize(
    "name,problem",
    [
        ("rtplan.dcm", "no pixel data"),
        ("no_meta.dcm", "no pixel data"),
        ("JPEGLSNearLossless_16.dcm", "too small"),
        ("MR_truncated.dcm", "cannot decode"),
        ("SC_rgb_rle_2frame.dcm", "multi-frame"),
    ],
)
def test_bad_real_dicom_names_file_and_problem(name: str, problem: str) -> None:
    path = get_testdata_file(name)
    with pytest.raises(XrayReadError) as err:
        load_xray(path)
    assert name in str(err.value) and problem in str(err.value)


def test_bad_files_name_file_and_problem(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    (tmp_path / "blank.png").write_bytes(b"")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "blank.png")
    nib.save(nib.Nifti1Image(np.random.rand(8, 8, 4).astype(np.float32), np.eye(4)), str(tmp_path / "vol.nii.gz"))
    (tmp_path / "x.txt").write_text("hello")
    cases = {
        "missing.png": "file not found",
        "empty.png": "empty",
        "junk.png": "not a readable image",
        "blank.png": "blank",
        "vol.nii.gz": "expected a 2D",
        "x.txt": "unsupported file type",
    }
    for name, problem in cases.items():
        with pytest.raises(XrayReadError) as err:
            load_xray(tmp_path / name)
        assert name in str(err.value) and problem in str(err.value), str(err.value)


def test_monai_loadimaged_with_xray_reader(tmp_path: Path) -> None:
    img = _gradient()
    path = save_xray(tmp_path / "a", img, "dcm")
    data = LoadImaged("image", reader=XrayReader(intensity=STORED))({"image": str(path)})
    data = EnsureChannelFirstd("image", channel_dim="no_channel")(data)
    assert tuple(data["image"].shape) == (1, *img.shape)
    np.testing.assert_allclose(data["image"][0].numpy(), img, atol=1 / 4095 + 1e-6)
    meta = data["image"].meta
    assert not any("Patient" in str(k) for k in meta)  # no DICOM header fields leak into metadata


def _colour_dicom(path: Path, rgb: np.ndarray, photometric: str) -> Path:
    """An 8-bit colour Secondary Capture: YBR_FULL uncompressed, or YBR_FULL(_422) as baseline JPEG (Pillow)."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.pixels import convert_color_space
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, photometric, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if photometric == "YBR_FULL":
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = convert_color_space(rgb, "RGB", "YBR_FULL").tobytes()
    else:  # Pillow's JPEG stores YCbCr; subsampling 1 is 4:2:2
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=95, subsampling=1)
        meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([buf.getvalue()])
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("photometric", ["YBR_FULL", "YBR_FULL_422"])
def test_colour_dicom_is_decoded_once_like_pydicom(tmp_path: Path, photometric: str) -> None:
    h, w = 48, 64
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), 255 - xx * 255 // (w - 1)], -1).astype(np.uint8)
    path = _colour_dicom(tmp_path / "colour.dcm", rgb, photometric)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    pydicom_rgb = pydicom.dcmread(path).pixel_array  # pydicom's own RGB
    out = load_xray(path, intensity=STORED)
    np.testing.assert_allclose(out, np.floor(pydicom_rgb.astype(np.float32) @ luma) / 255, atol=1e-6)
    assert np.abs(out - (rgb.astype(np.float32) @ luma) / 255).mean() < 0.01  # the colours written, not 0.24 off


@pytest.mark.parametrize("name", ["1.2.840.113619.2.55.3.604688119.969.1268071029.320", "IM0001", "scan.png"])
def test_dicom_is_recognised_by_content_whatever_the_name(tmp_path: Path, name: str) -> None:
    img = _gradient()
    path = save_xray(tmp_path / "x", img, "dcm").rename(tmp_path / name)
    np.testing.assert_allclose(load_xray(path, intensity=STORED), img, atol=1 / 4095 + 1e-6)
    assert XrayReader().verify_suffix(str(path))
    data = LoadXrayd("image", intensity=STORED)({"image": str(path)})
    assert tuple(data["image"].shape) == img.shape


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` 8-bit gray pixels, with almost no pixel data behind it."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))  # one row
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_pixel_cap_refuses_from_the_header_before_decoding(tmp_path: Path) -> None:
    big_png = _png_header_only(tmp_path / "big.png", 8000, 8000)  # 64 megapixels: about 3 GB to process
    ds = pydicom.dcmread(save_xray(tmp_path / "d", _gradient(), "dcm"))
    ds.Rows = ds.Columns = 9000  # header only: the pixel data is that of a 40x60 image
    ds.save_as(tmp_path / "big.dcm")
    nib.save(nib.Nifti1Image(np.zeros((3, 3), np.uint8), np.eye(4)), str(tmp_path / "big.nii"))
    raw = bytearray((tmp_path / "big.nii").read_bytes())
    raw[42:46] = np.array([7000, 7000], "<i2").tobytes()  # dim[1], dim[2] of the header; the data stays 3x3
    (tmp_path / "big.nii").write_bytes(bytes(raw))
    for path in (big_png, tmp_path / "big.dcm", tmp_path / "big.nii"):
        with pytest.raises(XrayReadError) as err:
            load_xray(path)  # the default cap (training and inference)
        assert path.name in str(err.value) and "too large" in str(err.value) and "max_pixels" in str(err.value)
    path = save_xray(tmp_path / "small", _gradient(), "png8")  # 40x60 = 2400 pixels
    with pytest.raises(XrayReadError, match="too large"):
        XrayReader(max_pixels=2000).read(str(path))
    assert load_xray(path, max_pixels=2400).shape == (40, 60)


def test_decoder_errors_are_one_line() -> None:
    path = get_testdata_file("JPEG-lossy.dcm")  # 12-bit JPEG: every installed decoder fails, one line each
    with pytest.raises(XrayReadError) as err:
        load_xray(path)
    assert "\n" not in str(err.value) and "JPEG-lossy.dcm" in str(err.value) and "cannot decode" in str(err.value)


def test_palette_png_loads_as_the_gray_of_its_colours(tmp_path: Path) -> None:
    img = _gradient()
    gray = Image.fromarray(np.round(img * 255).astype(np.uint8))
    gray.convert("P").save(tmp_path / "palette.png")
    assert Image.open(tmp_path / "palette.png").mode == "P"
    np.testing.assert_allclose(load_xray(tmp_path / "palette.png", intensity=STORED), img, atol=1.5 / 255)


def test_unreadable_file_raises_only_xray_read_error(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "IM0002"
    path.write_bytes(b"\0" * 200)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("pydicom.misc.is_dicom", refuse)  # as for a file the user may not read (tests run as root)
    with pytest.raises(XrayReadError, match="IM0002: cannot read the image .PermissionError"):
        load_xray(path)
    assert not XrayReader().verify_suffix(str(path))
