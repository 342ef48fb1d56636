"""Per-format evaluation: file format names from headers, the breakdown figures, the model card's markdown table."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.detector_evaluation import detector_by_format
from scripts.evaluation import metrics_by_group
from scripts.evaluation_report import add_format_breakdown
from scripts.file_formats import file_format
from scripts.imageio import KINDS, save_xray
from tools.format_table import format_rows, markdown_table, run_table

REPO = Path(__file__).resolve().parents[1]
IMAGE = np.random.default_rng(0).random((48, 40)).astype(np.float32)
KIND_NAMES = {  # scripts.imageio.KINDS -> file_format's name
    "png8": "png8",
    "png16": "png16",
    "png16_12bit": "png16-12bit",
    "jpeg": "jpeg",
    "dcm": "dicom12",
    "dcm_mono1": "dicom12-mono1",
    "dcm_rle": "dicom12-rle",
    "nii": "nifti-float",
}


def _dicom(path: Path, bits: int, photometric: str = "MONOCHROME2", syntax: str | None = None) -> Path:
    """A minimal DICOM with ``bits`` stored in 16 allocated, written with pydicom; ``syntax`` compresses it."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = IMAGE.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = np.round(IMAGE * (2**bits - 1)).astype(np.uint16).tobytes()
    if syntax:
        ds.compress(syntax, encoding_plugin="pydicom")
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("kind", KINDS)
def test_file_format_names_every_kind_the_bundle_writes(kind: str, tmp_path: Path) -> None:
    name = file_format(save_xray(tmp_path / "x", IMAGE, kind))
    assert name == KIND_NAMES.get(kind, name) and name  # a kind added later only needs a name


def test_file_format_names_other_files(tmp_path: Path) -> None:
    import nibabel as nib
    from pydicom.uid import RLELossless

    gray8 = np.round(IMAGE * 255).astype(np.uint8)
    Image.fromarray(gray8).save(tmp_path / "gray.jpg")
    Image.fromarray(gray8).convert("RGB").save(tmp_path / "colour.jpeg")
    Image.fromarray(gray8).convert("RGB").save(tmp_path / "colour.png")
    Image.fromarray(np.round(IMAGE * 65535).astype(np.uint16)).save(tmp_path / "deep.tif")
    nib.save(nib.Nifti1Image(np.round(IMAGE.T * 1000).astype(np.int16), np.eye(4)), str(tmp_path / "ct.nii"))
    expected = {
        "gray.jpg": "jpeg",
        "colour.jpeg": "jpeg-rgb",
        "colour.png": "png8-rgb",
        "deep.tif": "tiff16",
        "ct.nii": "nifti-int16",
        _dicom(tmp_path / "twelve.dcm", 12).name: "dicom12",
        _dicom(tmp_path / "fourteen.dcm", 14, "MONOCHROME1").name: "dicom14-mono1",
        _dicom(tmp_path / "sixteen.dcm", 16, syntax=RLELossless).name: "dicom16-rle",
        _dicom(tmp_path / "1.2.840.99.1", 12).name: "dicom12",  # a PACS export named by UID: found by its preamble
    }
    assert {name: file_format(tmp_path / name) for name in expected} == expected
    (tmp_path / "broken.png").write_bytes(b"not a PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    assert file_format(tmp_path / "broken.png") == "png"  # an unreadable header: the suffix
    assert file_format(tmp_path / "notes.txt") == "txt" and file_format(tmp_path / "missing") == "unknown"


# format "a": 2 normals (0.1, 0.6), 2 fractures (0.4, 0.9); format "b": 3 normals (0.2, 0.7, 0.3); threshold 0.5
Y = [0, 0, 0, 1, 1, 0, 0]
S = [0.1, 0.2, 0.6, 0.4, 0.9, 0.7, 0.3]
G = ["a", "b", "a", "a", "a", "b", "b"]
BY_FORMAT = {
    # 3 of the 4 fracture-normal pairs ordered right (0.4 < 0.6); one of each class called right at 0.5
    "a": {"n_images": 4, "n_fractures": 2, "roc_auc": 0.75, "accuracy": 0.5, "sensitivity": 0.5, "specificity": 0.5},
    # one class only: no AUC and no sensitivity; 0.7 is a false positive
    "b": {
        "n_images": 3,
        "n_fractures": 0,
        "roc_auc": None,
        "accuracy": 2 / 3,
        "sensitivity": None,
        "specificity": 2 / 3,
    },
}


def test_metrics_by_group_on_hand_made_examples() -> None:
    got = metrics_by_group(Y, S, G, 0.5)
    assert list(got) == ["a", "b"]
    for name, figures in BY_FORMAT.items():
        assert got[name] == pytest.approx(figures), name
    assert json.loads(json.dumps(got))["b"]["roc_auc"] is None  # JSON null, not NaN
    with pytest.raises(ValueError, match="length"):
        metrics_by_group(Y, S, G[:-1], 0.5)


def test_add_format_breakdown_groups_the_source_images(tmp_path: Path) -> None:
    dataset = tmp_path / "data"
    (dataset / "images").mkdir(parents=True)
    kinds = {"a": "png8", "b": "dcm_mono1"}
    ids = []
    for i, group in enumerate(G):
        path = save_xray(dataset / "images" / f"im{i}", IMAGE, kinds[group])
        ids.append(path.relative_to(dataset).as_posix())
    out = tmp_path / "classifier"
    out.mkdir()
    collected = {"pred": [[s] for s in S], "label": [float(y) for y in Y], "source_image": ids}
    result = add_format_breakdown({"threshold": 0.5, "figures": {"roc": "evaluation_roc.png"}}, collected, dataset, out)
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved == json.loads(json.dumps(result)) and saved["figures"]["roc"] == "evaluation_roc.png"
    assert list(saved["by_format"]) == ["dicom12-mono1", "png8"]
    assert saved["by_format"]["png8"] == pytest.approx(BY_FORMAT["a"])
    assert saved["by_format"]["dicom12-mono1"] == pytest.approx(BY_FORMAT["b"])
    with open(out / saved["figures"]["by_format_table"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["format"] for r in rows] == ["dicom12-mono1", "png8"] and rows[0]["roc_auc"] == ""
    assert float(rows[1]["roc_auc"]) == 0.75 and rows[1]["n_fractures"] == "2"
    with pytest.raises(KeyError, match="source_image"):
        add_format_breakdown({"threshold": 0.5}, {"pred": S, "label": Y}, dataset, out)


def test_detector_by_format_hit_rate_iou_and_failures() -> None:
    box, none = {"x1": 1.0}, {"x1": ""}
    rows = [
        {"format": "png8", "contains_both": 1, "iou": 0.8, **box},
        {"format": "png8", "contains_both": 0, "iou": 0.4, **box},
        {"format": "dicom12", "contains_both": 1, "iou": 0.9, **box},
        {"format": "png8", "contains_both": 0, "iou": 0.0, **none},
    ]
    got = detector_by_format(rows)
    assert list(got) == ["dicom12", "png8"]
    assert got["png8"] == pytest.approx({"n_images": 3, "hit_rate": 1 / 3, "mean_iou": 0.4, "failures": 1})
    assert got["dicom12"] == pytest.approx({"n_images": 1, "hit_rate": 1.0, "mean_iou": 0.9, "failures": 0})


def _fake_run(run: Path, classifier: bool = True) -> Path:
    """A run folder as ``make demo`` leaves it, reduced to the two evaluation.json files' relevant keys."""
    (run / "detector").mkdir(parents=True)
    detector = {
        "images": 7,
        "contains_both_landmarks": 6 / 7,
        "by_format": {
            "png8": {"n_images": 4, "hit_rate": 0.75, "mean_iou": 0.8, "failures": 0},
            "dicom12-mono1": {"n_images": 3, "hit_rate": 1.0, "mean_iou": 0.9, "failures": 0},
        },
    }
    (run / "detector" / "evaluation.json").write_text(json.dumps(detector))
    if classifier:
        (run / "classifier").mkdir()
        metrics = {"roc_auc": 0.8, "accuracy": 4 / 7, "sensitivity": 0.5, "specificity": 0.6}
        evaluation = {
            "n_images": 7,
            "n_fractures": 2,
            "metrics": {k: {"value": v, "ci_low": 0.0, "ci_high": 1.0} for k, v in metrics.items()},
            "by_format": {"png8": BY_FORMAT["a"], "dicom12-mono1": BY_FORMAT["b"]},
        }
        (run / "classifier" / "evaluation.json").write_text(json.dumps(evaluation))
    return run


def test_format_table_prints_one_markdown_table(tmp_path: Path) -> None:
    table = run_table(_fake_run(tmp_path / "demo"))
    lines = table.splitlines()
    header = (
        "format | images | fractures | detector hit rate | C AUC | accuracy at threshold | sensitivity | specificity"
    )
    assert lines[0] == f"| {header} |" and lines[1] == "|---|" + "---:|" * 7
    assert lines[2] == "| dicom12-mono1 | 3 | 0 | 1.000 | n/a | 0.667 | n/a | 0.667 |"
    assert lines[3] == "| png8 | 4 | 2 | 0.750 | 0.750 | 0.500 | 0.500 | 0.500 |"
    assert lines[4] == "| all formats | 7 | 2 | 0.857 | 0.800 | 0.571 | 0.500 | 0.600 |" and len(lines) == 5
    cli = subprocess.run(
        [sys.executable, "-m", "tools.format_table", str(tmp_path / "demo")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert cli.stdout.strip() == table


def test_format_table_with_one_stage_or_none(tmp_path: Path) -> None:
    detector = json.loads((_fake_run(tmp_path / "det", classifier=False) / "detector" / "evaluation.json").read_text())
    rows = format_rows(detector, None)
    assert markdown_table(rows).splitlines()[3] == "| png8 | 4 | - | 0.750 | - | - | - | - |"
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="by_format"):
        run_table(tmp_path / "empty")
