"""Inference refuses DICOM that is not a plain head radiograph, with one line, unless told to run it anyway."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

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
