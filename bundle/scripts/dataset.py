"""The data contract every stage reads: a folder with ``dataset.csv``.

Columns ``image,patient_id,label,nasion_x,nasion_y,tip_x,tip_y,fracture_mask``:

- ``image``: path relative to the folder (DICOM, PNG/JPEG or 2D NIfTI; see ``imageio``);
- ``patient_id``: groups images of one patient (splits never separate them);
- ``label``: 0 normal, 1 nasal bone fracture;
- ``nasion_x, nasion_y, tip_x, tip_y``: the two landmarks in pixels of the image as displayed
  (x = column, y = row); empty only on images used for inference;
- ``fracture_mask``: optional path of a PNG mask (non-zero = fracture region) on the image's grid;
  empty for normals and for real data without region labels.
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import numpy as np

COLUMNS = ("image", "patient_id", "label", "nasion_x", "nasion_y", "tip_x", "tip_y", "fracture_mask")
CSV_NAME = "dataset.csv"


class DatasetError(ValueError):
    """A ``dataset.csv`` that breaks the contract: the message names the file, row and problem."""


def _float(value: str, where: str) -> float:
    try:
        out = float(value)
    except ValueError as err:
        raise DatasetError(f"{where}: '{value}' is not a number") from err
    if not np.isfinite(out):
        raise DatasetError(f"{where}: '{value}' is not finite")
    return out


def read_dataset(dataset_dir: str | Path, require_landmarks: bool = True, check_files: bool = True) -> list[dict]:
    """Read and validate ``dataset_dir/dataset.csv`` into MONAI-style data dicts.

    Each dict has ``image`` and ``fracture_mask`` as absolute paths (``""`` if no mask),
    ``id`` (the image path relative to the folder), ``patient_id``, ``label`` (int) and the four
    landmark coordinates as floats.
    """
    root = Path(dataset_dir)
    csv_path = root / CSV_NAME
    if not csv_path.is_file():
        raise DatasetError(
            f"{csv_path}: not found (a dataset folder needs a {CSV_NAME}; see the README's data contract)"
        )
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{csv_path}: missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}")
        rows = list(reader)
    if not rows:
        raise DatasetError(f"{csv_path}: no rows")
    records, absent = [], []
    for i, row in enumerate(rows, start=2):
        where = f"{csv_path}, line {i}"
        if row["label"].strip() not in ("0", "1"):
            raise DatasetError(f"{where}: label must be 0 or 1, got '{row['label']}'")
        rec = {
            "id": row["image"],
            "image": str(root / row["image"]),
            "patient_id": row["patient_id"].strip() or row["image"],
            "label": int(row["label"]),
            "fracture_mask": str(root / row["fracture_mask"]) if row["fracture_mask"].strip() else "",
        }
        for key in ("nasion_x", "nasion_y", "tip_x", "tip_y"):
            if row[key].strip():
                rec[key] = _float(row[key], f"{where}, {key}")
            elif require_landmarks:
                raise DatasetError(f"{where}: {key} is empty (landmarks are needed for training)")
        if check_files:
            absent += [p for p in (rec["image"], rec["fracture_mask"]) if p and not Path(p).is_file()]
        records.append(rec)
    if absent:
        shown = "\n  ".join(absent[:10])
        raise DatasetError(f"{csv_path}: {len(absent)} listed file(s) do not exist, e.g.\n  {shown}")
    return records


def write_dataset_csv(dataset_dir: str | Path, rows: list[dict]) -> Path:
    """Write ``rows`` (dicts with the contract's columns, paths relative) as ``dataset.csv``."""
    path = Path(dataset_dir) / CSV_NAME
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in COLUMNS})
    return path


def landmarks(record: dict) -> np.ndarray:
    """The record's landmarks as a ``(2, 2)`` array ``[[nasion_x, nasion_y], [tip_x, tip_y]]``."""
    return np.array([[record["nasion_x"], record["nasion_y"]], [record["tip_x"], record["tip_y"]]], dtype=np.float64)


def unique_stems(ids: list[str]) -> dict[str, str]:
    """A flat, collision-free file stem per image id: ``a/IM0001.dcm`` -> ``a__IM0001``.

    Ids that would still share a stem (``a/x.png``, ``a/x.dcm``) get a short hash of the id appended.
    """
    flat = {}
    for rid in ids:
        name = rid.replace("\\", "/")
        name = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else os.path.splitext(name)[0]
        flat[rid] = name.strip("/").replace("/", "__")
    counts: dict[str, int] = {}
    for stem in flat.values():
        counts[stem.lower()] = counts.get(stem.lower(), 0) + 1
    return {
        rid: stem if counts[stem.lower()] == 1 else f"{stem}_{hashlib.sha256(rid.encode()).hexdigest()[:8]}"
        for rid, stem in flat.items()
    }
