"""The data contract every stage reads: a folder with ``dataset.csv``.

Columns ``image,patient_id,label,nasion_x,nasion_y,tip_x,tip_y,fracture_mask``:

- ``image``: path relative to the folder (DICOM, PNG/JPEG or 2D NIfTI; see ``imageio``), each image once;
- ``patient_id``: groups images of one patient (splits never separate them); never empty;
- ``label``: 0 normal, 1 nasal bone fracture;
- ``nasion_x, nasion_y, tip_x, tip_y``: the two landmarks in pixels of the image as displayed
  (x = column, y = row); empty only on images used for inference;
- ``fracture_mask``: optional path of a PNG mask (non-zero = fracture region) on the image's grid;
  empty for normals and for real data without region labels.

The file is UTF-8; a byte-order mark (Excel's "CSV UTF-8") is accepted and ignored. ``scan_dataset`` reports
every problem of the file at once as ``Problem`` s (file, line, column); ``read_dataset`` raises one
``DatasetError`` listing them. ``scripts.data_validation`` adds the checks that need the images.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLUMNS = ("image", "patient_id", "label", "nasion_x", "nasion_y", "tip_x", "tip_y", "fracture_mask")
LANDMARK_COLUMNS = ("nasion_x", "nasion_y", "tip_x", "tip_y")
CSV_NAME = "dataset.csv"
ERROR, WARNING = "error", "warning"


class DatasetError(ValueError):
    """A dataset that breaks the contract: the message lists every problem with its file, line and column."""


@dataclass(frozen=True)
class Problem:
    """One problem of a dataset file; ``str()`` is one line, ``file:line: [warning: ][column c: ]message``."""

    file: str
    line: int | None
    column: str | None
    message: str
    severity: str = ERROR

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        tag = "warning: " if self.severity == WARNING else ""
        column = f"column {self.column}: " if self.column else ""
        return f"{where}: {tag}{column}{self.message}"


def raise_if_errors(problems: list[Problem], what: str) -> None:
    """Raise one ``DatasetError`` listing every error in ``problems`` (warnings are left out), if there is any."""
    errors = [p for p in problems if p.is_error]
    if errors:
        lines = "\n  ".join(str(p) for p in errors)
        raise DatasetError(f"{what}: {len(errors)} error(s):\n  {lines}")


def decode_text(path: Path) -> tuple[str, list[Problem]]:
    """A CSV file's text (UTF-8, a byte-order mark dropped); lines that are not UTF-8 are problems."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig"), []
    except UnicodeDecodeError:
        problems = []
        for i, line in enumerate(raw.split(b"\n"), start=1):
            try:
                line.decode("utf-8-sig" if i == 1 else "utf-8")
            except UnicodeDecodeError:
                problems.append(Problem(str(path), i, None, "not UTF-8 text (save it as UTF-8; Excel: CSV UTF-8)"))
        return raw.decode("utf-8-sig", errors="replace"), problems


def csv_rows(path: Path, columns: tuple[str, ...]) -> tuple[list[tuple[int, dict[str, str]]], list[Problem]]:
    """The rows of a CSV file as ``(line, {column: text})``, with the problems of its encoding, header and shape.

    Missing columns are a problem and leave no rows; a row with too many or too few fields is a problem and
    its missing fields read as ``""``.
    """
    text, problems = decode_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in columns if c not in header]
    if missing:
        problems.append(
            Problem(str(path), 1, None, f"missing column(s) {', '.join(missing)}; expected {','.join(columns)}")
        )
        return [], problems
    rows = []
    for row in reader:
        extra, absent = row.pop(None, None), [k for k, v in row.items() if v is None]
        if extra or absent:
            n = len(header) + len(extra or []) - len(absent)
            problems.append(Problem(str(path), reader.line_num, None, f"{n} fields, the header has {len(header)}"))
        rows.append((reader.line_num, {k: v or "" for k, v in row.items()}))
    return rows, problems


def _number(text: str) -> tuple[float | None, str]:
    try:
        value = float(text)
    except ValueError:
        return None, f"'{text}' is not a number"
    return (value, "") if np.isfinite(value) else (None, f"'{text}' is not finite")


def _scan_row(root: Path, row: dict[str, str], require_landmarks: bool) -> tuple[dict, list[tuple[str, str]]]:
    """One row's record (``label`` is None and a landmark absent when unreadable) and its ``(column, problem)``s."""
    found = []
    rec = {
        "id": row["image"],
        "image": str(root / row["image"]),
        "patient_id": row["patient_id"].strip() or row["image"],
        "label": int(row["label"]) if row["label"].strip() in ("0", "1") else None,
        "fracture_mask": str(root / row["fracture_mask"]) if row["fracture_mask"].strip() else "",
    }
    if not row["image"].strip():
        found.append(("image", "empty"))
    if not row["patient_id"].strip():
        found.append(("patient_id", "empty (give every image its patient's id: splits group images by it)"))
    if rec["label"] is None:
        found.append(("label", f"must be 0 or 1, got '{row['label']}'"))
    for key in LANDMARK_COLUMNS:
        if row[key].strip():
            value, problem = _number(row[key])
            if problem:
                found.append((key, problem))
            else:
                rec[key] = value
        elif require_landmarks:
            found.append((key, "empty (landmarks are needed for training)"))
    if all(k in rec for k in LANDMARK_COLUMNS) and (rec["nasion_x"], rec["nasion_y"]) == (rec["tip_x"], rec["tip_y"]):
        found.append(("tip_x", "the tip is at the nasion (the landmark box would have no size)"))
    return rec, found


def scan_dataset(
    dataset_dir: str | Path, require_landmarks: bool = True, check_files: bool = True
) -> tuple[list[dict], list[Problem]]:
    """Every row of ``dataset_dir/dataset.csv`` as a record (with its csv ``line``), and every problem of the file.

    Problems: no file, not UTF-8, missing columns, no rows, a row with the wrong number of fields, an empty image or
    patient_id, an image listed twice, a label other than 0/1, a landmark that is not a finite number (or empty
    with ``require_landmarks``), nasion and tip at one point, and (``check_files``) images and masks that do not
    exist. The records of rows with problems are returned too (``label`` None if unreadable, a bad landmark absent).
    """
    root = Path(dataset_dir)
    csv_path = root / CSV_NAME
    if not csv_path.is_file():
        message = f"not found (a dataset folder needs a {CSV_NAME}; see the README's data contract)"
        return [], [Problem(str(csv_path), None, None, message)]
    rows, problems = csv_rows(csv_path, COLUMNS)
    if not rows and not problems:
        problems.append(Problem(str(csv_path), None, None, "no rows"))
    records, first_line = [], {}
    for line, row in rows:
        rec, found = _scan_row(root, row, require_landmarks)
        rec["line"] = line
        key = posixpath.normpath(row["image"].strip().replace("\\", "/"))
        duplicate = bool(row["image"].strip()) and key in first_line
        if duplicate:
            found.insert(0, ("image", f"{row['image']} is listed again (first on line {first_line[key]})"))
        first_line.setdefault(key, line)
        if check_files:
            for column in ("fracture_mask",) if duplicate else ("image", "fracture_mask"):
                if row[column].strip() and not (root / row[column]).is_file():
                    found.append((column, f"{row[column]}: file not found"))
        problems += [Problem(str(csv_path), line, column, message) for column, message in found]
        records.append(rec)
    return records, problems


def read_dataset(dataset_dir: str | Path, require_landmarks: bool = True, check_files: bool = True) -> list[dict]:
    """Read ``dataset_dir/dataset.csv`` into MONAI-style data dicts; raise one ``DatasetError`` listing every
    problem ``scan_dataset`` finds.

    Each dict has ``image`` and ``fracture_mask`` as absolute paths (``""`` if no mask),
    ``id`` (the image path relative to the folder), ``patient_id``, ``label`` (int) and the four
    landmark coordinates as floats.
    """
    records, problems = scan_dataset(dataset_dir, require_landmarks, check_files)
    raise_if_errors(problems, str(Path(dataset_dir) / CSV_NAME))
    return [{k: v for k, v in rec.items() if k != "line"} for rec in records]


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
