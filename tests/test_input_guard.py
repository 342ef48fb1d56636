"""Inference refuses DICOM that is not a plain head radiograph, with one line, unless told to run it anyway."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from scripts.imageio import XrayReadError, save_xray
from scripts.input_guard import CheckHeadRadiographd, check_input

IMAGE = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(64, 48)


def _dicom(tmp_path: Path, name: str, **attributes) -> Path:
    path = save_xray(tmp_path / name, IMAGE, "dcm")  # a DX image (Digital X-Ray for Presentation)
    ds = pydicom.dcmread(path)
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path


@pytest.mark.parametrize(
    "attributes, reason",
    [
        ({"Modality": "CT"}, "Modality CT is not a radiograph"),
        ({"Modality": "MR"}, "Modality MR is not a radiograph"),
        ({"Modality": "OT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, "SOP class 1.2.840.10008.5.1.4.1.1.2"),
        ({"BodyPartExamined": "CHEST"}, "BodyPartExamined CHEST is not the head"),
        ({"PhotometricInterpretation": "RGB"}, "a colour image (RGB)"),
        ({"NumberOfFrames": 3}, "3 frames"),
    ],
)
def test_non_radiographs_are_refused_in_one_line(tmp_path, attributes, reason) -> None:
    path = _dicom(tmp_path, "x", **attributes)
    with pytest.raises(XrayReadError) as err:
        check_input(path)
    message = str(err.value)
    assert reason in message and "not assessed" in message and "--allow_any_modality" in message
    assert "\n" not in message
    check_input(path, allow_any_modality=True)  # the user's override


@pytest.mark.parametrize(
    "attributes",
    [{}, {"BodyPartExamined": "SKULL"}, {"BodyPartExamined": "HEAD"}, {"Modality": "CR"}, {"Modality": "OT"}],
)
def test_head_radiographs_pass(tmp_path, attributes) -> None:
    check_input(_dicom(tmp_path, "x", **attributes))


def test_files_without_a_header_pass_and_the_transform_checks_paths(tmp_path) -> None:
    png = save_xray(tmp_path / "p", IMAGE, "png8")
    check_input(png)  # PNG/NIfTI carry no modality: the detector's confidence floor guards them
    guard = CheckHeadRadiographd(keys="image")
    assert guard({"image": str(png)}) == {"image": str(png)}
    ct = _dicom(tmp_path, "ct", Modality="CT")
    with pytest.raises(XrayReadError, match="Modality CT"):
        guard({"image": str(ct)})
    assert CheckHeadRadiographd(keys="image", allow_any_modality=True)({"image": str(ct)})["image"] == str(ct)


def test_inference_refuses_a_ct_slice_and_goes_on(models, tmp_path) -> None:
    """The inference config runs the guard first: a CT DICOM gets a one-line 'not assessed' error, a DX is assessed."""
    import json

    from scripts.inference import run_inference

    folder = tmp_path / "in"
    folder.mkdir()
    _dicom(folder, "ct", Modality="CT")
    _dicom(folder, "dx")
    out = tmp_path / "out"
    run_inference(folder, out, models, device="cpu", tracking_uri=f"sqlite:///{tmp_path}/m.db")
    ct, dx = (json.loads((out / f"{name}.json").read_text()) for name in ("ct", "dx"))
    assert set(ct) == {"image", "error"} and "not assessed: Modality CT" in ct["error"]
    assert "error" not in dx and dx["finding"] in ("fracture", "suspicious", "no fracture", "not assessable")


def test_a_crop_unlike_the_validation_crops_is_flagged() -> None:
    from scripts.input_guard import FlagCropIntensityd, intensity_warning

    ranges = {"mean": [0.3, 0.5], "std": [0.1, 0.2]}
    rng = np.random.default_rng(0)
    usual = np.clip(0.4 + 0.15 * rng.standard_normal((32, 32)), 0, 1)
    assert intensity_warning(usual, ranges) is None
    white = np.full((32, 32), 0.95)  # e.g. a photograph's blown-out region, or an inverted X-ray
    warning = intensity_warning(white, ranges)
    assert warning and "mean 0.950 is far outside the validation crops' 0.300-0.500" in warning
    flagged = FlagCropIntensityd(keys="crop", ranges=ranges)({"crop": torch.from_numpy(white)[None]})
    assert flagged["warnings"] == [warning]
    assert "warnings" not in FlagCropIntensityd(keys="crop", ranges={})({"crop": white})  # older weights: no check
