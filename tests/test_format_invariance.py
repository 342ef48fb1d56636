"""One X-ray, one answer: the same image stored in every format and bit depth a hospital exports loads the same.

Each phantom X-ray (a normal and a fractured one) is written as 8-bit PNG, 16-bit PNG at full range, 16-bit PNG
holding 12-bit values, DICOM with BitsStored 12, 14 and 16 (MONOCHROME2 and MONOCHROME1, with and without a rescale
intercept, with and without a window), float and int16 NIfTI of arbitrary range, and JPEG. Every file must load
(``scripts.imageio.load_xray``, the loader training and inference share) to the same [0, 1] image as the 16-bit
PNG, within ``LOSSLESS_ATOL`` (``JPEG_*`` for JPEG), and give the same detector box (2 px) and classifier
probability (0.02) with the bundle's networks.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from scripts.classifier import load_classifier
from scripts.dataset import landmarks, read_dataset
from scripts.detector import NasalBoneDetector
from scripts.geometry import crop_box, landmark_box
from scripts.imageio import load_xray

LOSSLESS_ATOL = 0.01  # 8-bit storage quantises to 1/255 of the window; every lossless format is within this
JPEG_MEAN_ATOL, JPEG_P99_ATOL = 0.01, 0.05  # lossy: its mean error, and the 99th percentile of its error
BOX_PX, PROB = 2.0, 0.02


def _dicom(path: Path, img: np.ndarray, bits: int, mono1: bool, intercept: float, window: bool) -> Path:
    """``img`` in [0, 1] as a DX DICOM: stored values over ``bits`` bits (80% of the range, offset 5%), the
    modality LUT ``stored + intercept``, an optional narrow VOI window (to show it is not applied)."""
    top = 2**bits - 1
    stored = np.round((0.05 + 0.8 * img) * top).astype(np.uint16)
    if mono1:
        stored = (top - stored).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if intercept:
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1, "US"
    if window:
        ds.WindowCenter, ds.WindowWidth = 0.3 * top + intercept, 0.1 * top
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _write_every_format(img: np.ndarray, folder: Path) -> dict[str, Path]:
    """``img`` (float in [0, 1]) in every format of the issue; name -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}

    def png(name: str, array: np.ndarray) -> None:
        Image.fromarray(array).save(folder / f"{name}.png")
        files[name] = folder / f"{name}.png"

    png("png8", np.round(img * 255).astype(np.uint8))
    png("png16", np.round(img * 65535).astype(np.uint16))
    png("png16_12bit", np.round(img * 4095).astype(np.uint16))  # a 12-bit image in a 16-bit PNG
    for bits in (12, 14, 16):
        for mono1 in (False, True):
            for intercept in (0.0, -1024.0):
                for window in (False, True):
                    name = f"dcm{bits}{'_mono1' if mono1 else ''}{'_rescale' if intercept else ''}"
                    name += "_window" if window else ""
                    files[name] = _dicom(folder / f"{name}.dcm", img, bits, mono1, intercept, window)
    nib.save(nib.Nifti1Image((img * 1234.5 - 300.0).T.astype(np.float32), np.eye(4)), str(folder / "f.nii.gz"))
    nib.save(nib.Nifti1Image(np.round(img * 3000 - 1000).T.astype(np.int16), np.eye(4)), str(folder / "i.nii.gz"))
    files["nifti_float"], files["nifti_int16"] = folder / "f.nii.gz", folder / "i.nii.gz"
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(folder / "x.jpg", quality=92)
    files["jpeg"] = folder / "x.jpg"
    return files


@pytest.fixture(scope="module")
def xrays(tiny_dataset, tmp_path_factory) -> list[tuple[dict, dict[str, Path]]]:
    """A normal and a fractured phantom X-ray, each in every format: (record, name -> file)."""
    records = read_dataset(tiny_dataset)
    chosen = [next(r for r in records if r["label"] == label) for label in (0, 1)]
    out = tmp_path_factory.mktemp("formats")
    return [(r, _write_every_format(load_xray(r["image"]), out / str(i))) for i, r in enumerate(chosen)]


def test_every_format_loads_to_the_same_image(xrays) -> None:
    for _, files in xrays:
        reference = load_xray(files["png16"])
        assert reference.min() == 0.0 and reference.max() == 1.0  # the robust window spans [0, 1]
        for name, path in files.items():
            img = load_xray(path)
            assert img.shape == reference.shape and img.dtype == np.float32, name
            err = np.abs(img - reference)
            if name == "jpeg":
                assert err.mean() <= JPEG_MEAN_ATOL and np.percentile(err, 99) <= JPEG_P99_ATOL, (name, err.mean())
            else:
                assert err.max() <= LOSSLESS_ATOL, (name, float(err.max()))


def test_the_old_container_scaling_was_not_invariant(xrays) -> None:
    """Control: dividing by the container's range (the former convention) loads the 12-bit PNG ~16 times too dark."""
    _, files = xrays[0]
    full, twelve = (load_xray(files[k], intensity="stored") for k in ("png16", "png16_12bit"))
    assert twelve.mean() < full.mean() / 10


def test_every_format_gives_the_same_box_and_probability(xrays, models) -> None:
    """With the bundle's networks (tiny ones here), every format gives the reference's box and probability."""
    detector = NasalBoneDetector(models / "detector.pt", conf=0.0)
    classifier, info = load_classifier(models / "classifier.pt")
    size, margin = int(info["crop_size"]), float(detector.margin)

    def answer(img: np.ndarray, record: dict) -> tuple[np.ndarray | None, float]:
        box, _ = detector.predict(img)
        # the probability on the landmark crop, so that it is compared on the same region in every format
        crop = crop_box(img, landmark_box(*landmarks(record), margin=margin), size)
        with torch.no_grad():
            logit = classifier(torch.from_numpy(crop)[None, None].float())
        return box, float(torch.sigmoid(logit).flatten()[0])

    for record, files in xrays:
        ref_box, ref_p = answer(load_xray(files["png16"]), record)
        assert ref_box is not None  # (confidence floor 0: the tiny detector always answers, so boxes are compared)
        for name, path in files.items():
            box, p = answer(load_xray(path), record)
            assert abs(p - ref_p) <= PROB, (name, p, ref_p)
            assert (box is None) == (ref_box is None), name
            if box is not None:
                assert np.abs(np.asarray(box) - np.asarray(ref_box)).max() <= BOX_PX, (name, box, ref_box)


def test_weights_from_another_intensity_convention_are_flagged(models, caplog) -> None:
    """classifier.pt records how its images were loaded; inference warns when that is not this loader's way."""
    import logging

    from scripts.inference import classifier_info

    with caplog.at_level(logging.WARNING):
        classifier_info(models / "classifier.pt")  # the tiny weights record no convention
    assert "trained with images loaded another way" in caplog.text and "retrain" in caplog.text
