"""validate-data: every problem of a dataset folder in one report, with file, line and column."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser
from PIL import Image

from scripts.data_validation import require_valid_dataset, validate_dataset
from scripts.dataset import DatasetError, read_dataset
from scripts.splits import assign_splits, ensure_split

ROOT = Path(__file__).resolve().parent.parent
BOM = b"\xef\xbb\xbf"


def _copy(dataset: Path, to: Path) -> Path:
    shutil.copytree(dataset, to)
    return to


def _rows(folder: Path) -> tuple[list[str], list[dict]]:
    with open(folder / "dataset.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _write_csv(path: Path, header: list[str], rows: list[dict], bom: bool = False) -> None:
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def _break(folder: Path, out: Path) -> list[tuple[str, int | None, str, str]]:
    """Put every problem the issue lists into a copy of the tiny dataset and a hand-made ``out/split.csv``; return
    the expected ``(file, line, column, text in the message)`` of each."""
    header, rows = _rows(folder)
    records = read_dataset(folder)
    line = {r["image"]: i + 2 for i, r in enumerate(rows)}  # csv line of each image (header on line 1)
    png = [r for r in rows[4:] if r["image"].endswith(".png")]
    unreadable, missing = png[0], png[1]
    masked = next(r for r in rows[4:] if r["fracture_mask"] and r not in (unreadable, missing))
    rows[1]["patient_id"] = ""
    rows[2]["nasion_x"] = "300"
    rows[3]["tip_y"] = "-5"
    (folder / unreadable["image"]).write_bytes(b"\x89PNG not an image")
    (folder / missing["image"]).unlink()
    Image.new("L", (128, 96), 255).save(folder / masked["fracture_mask"])
    _write_csv(folder / "dataset.csv", header, [*rows, dict(rows[0])], bom=True)  # the last row repeats line 2

    split = assign_splits(records, (0.8, 0.1, 0.1), 0)
    patient_label = {r["patient_id"]: r["label"] for r in records if r["label"] == 1}
    split.update({p: "train" for p, s in split.items() if s == "val" and p in patient_label})  # val: no fracture
    edited = {rows[1]["patient_id"], records[-1]["patient_id"]}  # an emptied patient_id, the image left out
    train = [r for r in records if split[r["patient_id"]] == "train" and r["patient_id"] not in edited]
    normal = next(r for r in train if r["label"] == 0)
    moved = next(r for r in train if r["patient_id"] == normal["patient_id"] and r is not normal)  # to val
    unknown = next(r for r in train if r["patient_id"] != normal["patient_id"])  # to 'validation'
    split_rows = [
        {"image": r["id"], "patient_id": r["patient_id"], "label": r["label"], "split": split[r["patient_id"]]}
        for r in records[:-1]  # the dataset's last image is left out
    ]
    split_line = {row["image"]: i + 2 for i, row in enumerate(split_rows)}
    split_rows[split_line[moved["id"]] - 2]["split"] = "val"
    split_rows[split_line[unknown["id"]] - 2]["split"] = "validation"
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "split.csv", ["image", "patient_id", "label", "split"], split_rows, bom=True)

    data, split_csv = str(folder / "dataset.csv"), str(out / "split.csv")
    return [
        (data, 3, "patient_id", "empty"),
        (data, 4, "nasion_x", "300 is outside the 256x256 image (x spans -0.5..255.5)"),
        (data, 5, "tip_y", "-5 is outside the 256x256 image (y spans -0.5..255.5)"),
        (data, line[unreadable["image"]], "image", f"{unreadable['image']}: not a readable image file"),
        (data, line[missing["image"]], "image", f"{missing['image']}: file not found"),
        (data, line[masked["image"]], "fracture_mask", "is 128x96 pixels, its image 256x256"),
        (data, len(rows) + 2, "image", f"{rows[0]['image']} is listed again (first on line 2)"),
        (
            split_csv,
            split_line[moved["id"]],
            "split",
            f"patient {moved['patient_id']} is in val here but in train on line {split_line[normal['id']]}",
        ),
        (split_csv, split_line[unknown["id"]], "split", "unknown split 'validation' (expected train, val, test)"),
        (
            split_csv,
            None,
            "image",
            f"1 image(s) of the dataset are not in the split: {rows[-1]['image']} (dataset.csv line",
        ),
        (split_csv, None, "split", "split.csv leaves val without a fracture (label 1) image (every split needs both)"),
    ]


def _assert_reported(problems, expected) -> None:
    for file, line, column, text in expected:
        found = [p for p in problems if (p.file, p.line, p.column) == (file, line, column) and text in p.message]
        assert found, f"not reported: {file}:{line}: column {column}: ...{text}...\n" + "\n".join(map(str, problems))


def test_a_valid_dataset_reports_nothing(tiny_dataset: Path, tmp_path: Path) -> None:
    assert validate_dataset(tiny_dataset) == []  # the split training would make
    split_file = ensure_split(tiny_dataset, tmp_path / "split.csv")
    assert validate_dataset(tiny_dataset, split_file) == []  # the split training made
    assert require_valid_dataset(tiny_dataset, split_file, [0.8, 0.1, 0.1], 0) == []


def test_every_problem_is_reported_at_once_with_file_line_and_column(tiny_dataset: Path, tmp_path: Path) -> None:
    folder, out = _copy(tiny_dataset, tmp_path / "broken"), tmp_path / "run"
    expected = _break(folder, out)
    problems = validate_dataset(folder, out / "split.csv", [0.8, 0.1, 0.1], 0)
    _assert_reported(problems, expected)
    assert all(p.is_error for p in problems) and len(problems) == len(expected)
    assert not any("missing column" in p.message for p in problems)  # the BOM is read as UTF-8
    assert str(problems[0]).startswith(f"{folder / 'dataset.csv'}:3: column patient_id: empty")
    with pytest.raises(DatasetError) as err:  # training's first step: one error listing them all
        require_valid_dataset(folder, out / "split.csv", [0.8, 0.1, 0.1], 0)
    assert str(err.value).startswith(f"dataset {folder}: {len(problems)} error(s):")
    assert all(str(p) in str(err.value) for p in problems)


def test_the_planned_split_needs_both_classes_in_every_split(tiny_dataset: Path, tmp_path: Path) -> None:
    data = str(tiny_dataset / "dataset.csv")
    what = "the split training would make (fractions 0.9/0.05/0.05, seed 0) leaves"
    expected = [
        (data, None, "label", f"{what} val without a normal (label 0) or a fracture (label 1) image"),
    ]
    problems = validate_dataset(tiny_dataset, fractions=(0.9, 0.05, 0.05), check_images=False)
    _assert_reported(problems, expected)
    split_file = ensure_split(tiny_dataset, tmp_path / "split.csv")  # made with 0.8/0.1/0.1: training would remake it
    _assert_reported(validate_dataset(tiny_dataset, split_file, (0.9, 0.05, 0.05), check_images=False), expected)


def test_a_byte_order_mark_is_accepted(tiny_dataset: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dataset, tmp_path / "bom")
    (folder / "dataset.csv").write_bytes(BOM + (folder / "dataset.csv").read_bytes())
    assert validate_dataset(folder, check_images=False) == []
    values = ("id", "patient_id", "label", "nasion_x", "nasion_y", "tip_x", "tip_y")  # the paths aside
    assert [[r[k] for k in values] for r in read_dataset(folder)] == [
        [r[k] for k in values] for r in read_dataset(tiny_dataset)
    ]
    split_file = ensure_split(folder, tmp_path / "split.csv")
    split_file.write_bytes(BOM + split_file.read_bytes())
    assert validate_dataset(folder, split_file, check_images=False) == []


def test_validate_config_uses_the_training_split_values() -> None:
    common = ConfigParser.load_config_file(ROOT / "bundle/configs/common.yaml")
    validate = ConfigParser.load_config_file(ROOT / "bundle/configs/validate_data.yaml")
    for key in ("dataset_dir", "output_dir", "split_file", "split_fractions", "split_seed"):
        assert validate[key] == common[key], key


def test_bundle_command_reports_and_exits_non_zero(tiny_dataset: Path, tmp_path: Path) -> None:
    folder, out = _copy(tiny_dataset, tmp_path / "broken"), tmp_path / "run"
    expected = _break(folder, out)
    config = "bundle/configs/validate_data.yaml"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "validate", "--config_file", config]
    cmd += ["--dataset_dir", str(folder), "--output_dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bundle")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for file, line, column, text in expected:
        where = f"{file}:{line}: column {column}: " if line else f"{file}: column {column}: "
        assert any(where in row and text in row for row in proc.stdout.splitlines()), (where, text, proc.stdout)
    assert f"validate-data: dataset {folder}: {len(expected)} error(s) (listed above)" in proc.stderr


def test_training_refuses_to_start_on_a_broken_dataset(tiny_dataset: Path, tmp_path: Path) -> None:
    """The chained training checks the data first: nothing trains, no MLflow run, no weights."""
    from monai.bundle import ConfigParser

    from scripts.pipeline import train_all

    folder, out = _copy(tiny_dataset, tmp_path / "broken"), tmp_path / "run"
    expected = _break(folder, out)
    stages = ConfigParser.load_config_files(ROOT / "bundle" / "configs" / "train.yaml")["stages"]
    with pytest.raises(DatasetError) as err:
        train_all(stages, profile="tiny", dataset_dir=str(folder), output_dir=str(out), models_dir=str(tmp_path / "m"))
    assert f"{len(expected)} error(s)" in str(err.value)
    assert not (out / "mlflow.db").exists() and not list((tmp_path / "m").glob("*.pt"))
