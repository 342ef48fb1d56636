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

from scripts.imageio import KINDS, XrayReader, XrayReadError, load_xray, save_xray


def _gradient(h: int = 40, w: int = 60) -> np.ndarray:
    """A non-square test image whose value encodes position: row and column can be told apart."""
    yy, xx = np.mgrid[0:h, 0:w]
    return (0.7 * xx / (w - 1) + 0.3 * yy / (h - 1)).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_roundtrip_every_kind_keeps_orientation_and_range(tmp_path: Path, kind: str) -> None:
    img = _gradient()
    path = save_xray(tmp_path / "x", img, kind)
    out = load_xray(path)
    assert out.shape == img.shape and out.dtype == np.float32
    tol = 1.0 / 255 if kind == "png8" else 1.0 / 4095 + 1e-6
    np.testing.assert_allclose(out, img, atol=tol)


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
    np.testing.assert_allclose(load_xray(tmp_path / "rgb.png"), img, atol=1.5 / 255)
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
    np.testing.assert_allclose(load_xray(tmp_path / "rgb.jpg"), img, atol=6 / 255)


def test_nifti_axis_convention(tmp_path: Path) -> None:
    img = _gradient()
    nib.save(nib.Nifti1Image(img.T[:, :, None].copy(), np.eye(4)), str(tmp_path / "x.nii"))  # (x, y, 1)
    np.testing.assert_allclose(load_xray(tmp_path / "x.nii"), img, atol=1e-6)


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
    out = load_xray(path)
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
    data = LoadImaged("image", reader=XrayReader())({"image": str(path)})
    data = EnsureChannelFirstd("image", channel_dim="no_channel")(data)
    assert tuple(data["image"].shape) == (1, *img.shape)
    np.testing.assert_allclose(data["image"][0].numpy(), img, atol=1 / 4095 + 1e-6)
    meta = data["image"].meta
    assert not any("Patient" in str(k) for k in meta)  # no DICOM header fields leak into metadata
