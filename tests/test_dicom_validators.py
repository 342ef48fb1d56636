"""Independent DICOM validators on the DICOM outputs (issue #15): dicom3tools' ``dciodvfy`` on every Secondary
Capture and SR, dcmtk's ``dsrdump`` on every SR, for PNG, DICOM (with and without the patient identity flag) and
NIfTI inputs and every finding ("fracture", "suspicious", "no fracture", "not assessable" without a box, and a caller
without the operating points), then over what the whole inference writes.

The tools come from Debian (``make setup`` installs the packages ``dicom3tools`` and ``dcmtk``); without them these
tests fail, they are never skipped.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from scripts.dicom_out import write_dicom_outputs
from scripts.imageio import load_xray, save_xray

TOOLS = ("dciodvfy", "dsrdump")
ROWS, COLS = 96, 80
BOX = [20.0, 10.0, 60.0, 70.0]
# The only dciodvfy warnings accepted, and only for outputs in a new study (PNG or NIfTI input, or DICOM without the
# identity flag): Study Date, Study Time and Study ID are left empty there (PS3.15 Basic Profile "Z"; the objects say
# LongitudinalTemporalInformationModified REMOVED), which dciodvfy notes because a DICOMDIR could not index them.
NEW_STUDY_WARNINGS = {
    f"Warning - Missing attribute or value that would be needed to build DICOMDIR - {name}"
    for name in ("Study Date", "Study Time", "Study ID")
}
INPUTS = {"png": ("png8", False), "dicom": ("dcm", False), "dicom_keep": ("dcm", True), "nifti": ("nii", False)}
FINDINGS = {  # finding (None: a caller without the operating points) -> (probability, value of "Fracture of bone")
    "fracture": (0.85, "Present"),
    "suspicious": (0.55, "Suspected"),
    "no fracture": (0.10, "Absent"),
    "not assessable": (None, "Presence Undetermined"),
    None: (0.73, "Present"),
}
CASES = [(source, finding) for source in INPUTS for finding in FINDINGS]


def require_tool(name: str) -> str:
    """The path of the command ``name``; the test fails (never skips) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not on PATH: install the Debian packages dicom3tools and dcmtk (make setup)", pytrace=False
        )
    return path


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    return {name: require_tool(name) for name in TOOLS}


def _dicom_input(path: Path) -> Path:
    """The bundle's DX DICOM export with a patient and study as a PACS gives them (for the identity flag)."""
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "DOE^JANE", "12345", "19800101", "F"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "101010", "S1", "ACC1"
    ds.ReferringPhysicianName, ds.PatientOrientation, ds.PixelSpacing = "WHO^DOCTOR", ["A", "F"], [0.2, 0.2]
    ds.save_as(path, enforce_file_format=True)
    return path


def _result(finding: str | None, shape: tuple[int, int]) -> dict:
    """The findings dict ``inference_writer`` passes (``region_mask`` empty below the suspicious point)."""
    probability, _ = FINDINGS[finding]
    region = np.zeros(shape, bool)
    if finding in ("fracture", "suspicious", None):
        region[30:45, 30:50] = True
    result = {
        "nasal_bone_box": None if probability is None else BOX,
        "detector_confidence": 0.01 if probability is None else 0.9,
        "fracture_probability": probability,
        "fracture": None if probability is None else probability >= 0.42,
        "threshold": 0.42,
        "region_mask": region,
    }
    if finding is not None:
        result.update(finding=finding, thresholds={"suspicious": 0.3, "fracture": 0.7})
    if finding == "not assessable":
        result["finding_reason"] = "no nasal bone found"
    return result


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[tuple[str, str | None], dict[str, Path]]:
    """SC and SR of every case, written as ``inference_writer._write_dicom`` writes them (the DICOM source read
    without its pixels)."""
    folder = tmp_path_factory.mktemp("validators")
    (folder / "in").mkdir()
    image = np.random.default_rng(0).random((ROWS, COLS)).astype(np.float32)
    out = {}
    for source_name, (kind, keep) in INPUTS.items():
        path = save_xray(folder / "in" / source_name, image, kind)
        source = None
        if kind == "dcm":
            source = pydicom.dcmread(_dicom_input(path), stop_before_pixels=True, force=True)
        gray = np.round(load_xray(path) * 255).astype(np.uint8)
        overlay = np.repeat(gray[..., None], 3, axis=2)
        for finding in FINDINGS:
            stem = f"{source_name}_{str(finding).replace(' ', '_')}"
            result = _result(finding, gray.shape)
            out[source_name, finding] = write_dicom_outputs(overlay, result, folder / "out", stem, source, keep)
    return out


def _dciodvfy(tool: str, path: Path, new_study: bool) -> None:
    """dciodvfy's verdict on ``path``: it names the IOD, no error, no unrecognised coding scheme, no warning beyond
    ``NEW_STUDY_WARNINGS`` (none at all in the source's study)."""
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    lines = [line.strip() for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    report = f"dciodvfy {path.name}:\n" + "\n".join(lines)
    assert {"SCImage", "ComprehensiveSR"} & set(lines), report  # it recognised the object
    assert not [line for line in lines if line.startswith("Error")], report
    warnings = {line for line in lines if line.startswith("Warning")}
    assert not [w for w in warnings if "Coding Scheme" in w or "defined term" in w], report
    assert warnings <= (NEW_STUDY_WARNINGS if new_study else set()), report


def _dsrdump(tool: str, path: Path) -> str:
    """dsrdump's rendering of the SR (exit status 0, nothing on stderr: it parsed and met the content constraints)."""
    run = subprocess.run([tool, "+Pl", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and not run.stderr.strip(), f"dsrdump {path.name}: {run.returncode}\n{run.stderr}"
    return run.stdout


@pytest.mark.parametrize(("source", "finding"), CASES, ids=[f"{s}-{f}" for s, f in CASES])
def test_validators_accept_the_outputs(tools, written, source: str, finding: str | None) -> None:
    paths = written[source, finding]
    new_study = not INPUTS[source][1]
    for path in paths.values():
        _dciodvfy(tools["dciodvfy"], path, new_study)
    text = _dsrdump(tools["dsrdump"], paths["structured_report"])
    assert "Verification Flag   : UNVERIFIED" in text and "NOT FOR DIAGNOSTIC USE" in text
    value = FINDINGS[finding][1]
    assert text.count('CODE:(,,"Fracture of bone")=') == 2 and f'"{value}")>' in text  # group and summary
    assert ("Probability" in text) == (finding != "not assessable")
    assert ('"Suspected fracture region"' in text) == (finding in ("fracture", "suspicious", None))
    if finding is not None:
        assert f"AI finding: {finding}" in text
        for point in ("main", "suspicious", "fracture"):
            assert f'"Algorithm Parameters")="operating point: {point}"' in text
    if finding == "not assessable":
        assert '"Nasal bone")=(260415000,SCT,"Not detected")' in text and "no nasal bone found" in text


def test_inference_outputs_pass_the_validators(tools, models, tmp_path) -> None:
    """What the whole inference writes for a PNG, a DICOM and a NIfTI X-ray (tiny untrained networks)."""
    from scripts.inference import run_inference

    image = np.random.default_rng(1).random((ROWS, COLS)).astype(np.float32)
    (tmp_path / "in").mkdir()
    for name, kind in (("png", "png8"), ("dicom", "dcm"), ("nifti", "nii")):
        path = save_xray(tmp_path / "in" / name, image, kind)
        if kind == "dcm":
            _dicom_input(path)
    run_inference(tmp_path / "in", tmp_path / "out", models, device="cpu", dicom_out=True)
    files = sorted((tmp_path / "out").glob("*_s[cr].dcm"))
    assert [f.name for f in files] == [f"{n}_{k}.dcm" for n in ("dicom", "nifti", "png") for k in ("sc", "sr")]
    for path in files:
        _dciodvfy(tools["dciodvfy"], path, new_study=True)
        if path.name.endswith("_sr.dcm"):
            assert "NOT FOR DIAGNOSTIC USE" in _dsrdump(tools["dsrdump"], path)


def test_a_missing_tool_fails_the_test(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(pytest.fail.Exception, match="dicom3tools and dcmtk"):
        require_tool("dciodvfy")
