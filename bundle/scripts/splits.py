"""Train/validation/test splits grouped by patient and stratified by label, written to disk once.

A patient's label is the maximum of its images' labels. Patients of each label are shuffled with
``seed`` and cut by ``fractions``, so no patient appears in two splits and every split keeps the
dataset's fracture rate. The split is saved as ``split.csv`` (``image,patient_id,label,split``) and
every stage reads the same file; ``split.fingerprint.json`` beside it records what it was made from
(``scripts.fingerprint``), so that a changed dataset, ``fractions`` or ``seed`` rebuild it.

A split file edited or written by hand is used as it is, but ``split_records`` refuses one that breaks it
(``check_split_file``: a patient in two splits, an unknown split name, an image listed twice or not at all).
``split_class_problems`` reports a split without both classes (``scripts.data_validation`` checks it before
training).
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import fingerprint
from .dataset import WARNING, Problem, csv_rows, raise_if_errors, read_dataset

logger = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = [0.8, 0.1, 0.1]


def assign_splits(records: list[dict], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict:
    """Map each patient id to ``"train"``, ``"val"`` or ``"test"``."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    patient_label: dict[str, int] = defaultdict(int)
    for rec in records:
        patient_label[rec["patient_id"]] = max(patient_label[rec["patient_id"]], int(rec["label"]))
    rng = np.random.default_rng(seed)
    out = {}
    for label in (0, 1):
        patients = sorted(p for p, lab in patient_label.items() if lab == label)
        rng.shuffle(patients)
        cuts = np.round(np.cumsum(fractions) * len(patients)).astype(int)
        for i, patient in enumerate(patients):
            out[patient] = SPLITS[int(np.searchsorted(cuts, i, side="right"))]
    return out


def write_split(path: str | Path, records: list[dict], patient_split: dict) -> Path:
    """Write ``split.csv`` listing every image with its split."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "patient_id", "label", "split"])
        for rec in records:
            writer.writerow([rec["id"], rec["patient_id"], rec["label"], patient_split[rec["patient_id"]]])
    return path


def split_parts(records: list[dict], fractions, seed: int | None) -> dict:
    """What a split is made from: the images, patients and labels, the fractions and the seed."""
    rows = sorted((r["id"], r["patient_id"], int(r["label"])) for r in records)
    return {
        "dataset": fingerprint.digest(rows),
        "fractions": [round(float(f), 6) for f in fractions],
        "seed": None if seed is None else int(seed),
    }


def split_plan(
    records: list[dict], split_file: str | Path | None, fractions=None, seed: int | None = None
) -> tuple[str, list[float], int, dict | None]:
    """What ``ensure_split`` does with ``split_file`` for ``records``: ``(reason, fractions, seed, parts)``.

    ``reason`` says why the split is (re)made, ``""`` when the existing file is used; ``parts`` (``split_parts``)
    is None for a split file without a fingerprint (written by hand), which is used as it is. ``None`` fractions
    or seed take the existing split's values (new splits use 0.8/0.1/0.1 and seed 0); a ``split_file`` of None
    is one that does not exist yet.
    """
    exists = split_file is not None and Path(split_file).is_file()
    recorded = fingerprint.read(split_file) if exists else None
    old = (recorded or {}).get("parts") or {}
    fractions = list(fractions) if fractions is not None else old.get("fractions", DEFAULT_FRACTIONS)
    seed = seed if seed is not None else old.get("seed", 0)
    if exists and recorded is None:
        return "", fractions, seed, None
    parts = split_parts(records, fractions, seed)
    reason = fingerprint.why(recorded, parts) if exists else "no split file yet"
    return reason, fractions, seed, parts


def ensure_split(
    dataset_dir: str | Path,
    split_file: str | Path,
    fractions: tuple[float, float, float] | list[float] | None = None,
    seed: int | None = None,
) -> Path:
    """Create ``split_file`` for ``dataset_dir`` unless a valid one exists; return its path.

    A split written here records what it was made from in ``split.fingerprint.json``; it is rebuilt (with a log
    line saying why) when the dataset's images, patients or labels change, or when ``fractions`` or ``seed`` are
    given and differ. ``None`` accepts the existing split's values (new splits use 0.8/0.1/0.1 and seed 0). A
    split file without a fingerprint (written by hand) is used as it is.
    """
    split_file = Path(split_file)
    records = read_dataset(dataset_dir)
    reason, fractions, seed, parts = split_plan(records, split_file, fractions, seed)
    if parts is None:
        logger.info("%s has no fingerprint (made by hand?): used as it is", split_file)
        return split_file
    if reason:
        if split_file.is_file():
            logger.info("%s: rebuilding the split: %s", split_file, reason)
        write_split(split_file, records, assign_splits(records, tuple(fractions), seed))
        inputs = {"dataset_dir": str(Path(dataset_dir).resolve()), "images": len(records), "fractions": fractions}
        fingerprint.record(split_file, parts, {**inputs, "seed": seed})
    return split_file


def read_split_rows(split_file: str | Path) -> tuple[list[tuple[int, dict[str, str]]], list[Problem]]:
    """The rows of ``split_file`` as ``(line, row)`` and the problems of its encoding, header and shape."""
    return csv_rows(Path(split_file), ("image", "split"))


def read_split(split_file: str | Path) -> dict[str, str]:
    """Map image (relative path) to its split name."""
    rows, problems = read_split_rows(split_file)
    raise_if_errors(problems, str(split_file))
    return {row["image"]: row["split"] for _, row in rows}


def check_split_file(records: list[dict], split_file: str | Path) -> tuple[dict[str, str], list[Problem]]:
    """An existing ``split_file`` against the dataset's ``records`` (their ``patient_id`` counts): its image to split
    name mapping (first listing, known split names) and its problems.

    Errors: an unreadable header or row, an image listed twice, a split name other than train/val/test, a
    patient whose images are in two splits, an image of the dataset missing from the split. Warning: an image
    the dataset does not have (ignored).
    """
    name = str(split_file)
    rows, problems = read_split_rows(split_file)
    if not rows and problems:
        return {}, problems
    line_of: dict[str, int] = {}
    split_of: dict[str, str] = {}
    for line, row in rows:
        image, split = row["image"], row["split"].strip()
        if image in line_of:
            problems.append(Problem(name, line, "image", f"{image} is listed again (first on line {line_of[image]})"))
            continue
        line_of[image] = line
        if split in SPLITS:
            split_of[image] = split
        else:
            problems.append(Problem(name, line, "split", f"unknown split '{split}' (expected {', '.join(SPLITS)})"))
    known = {r["id"] for r in records}
    for image in sorted(set(line_of) - known, key=line_of.get):
        problems.append(Problem(name, line_of[image], "image", f"{image} is not in dataset.csv (ignored)", WARNING))
    first: dict[str, tuple[str, int]] = {}  # patient: the split and line of its first image in the split file
    reported: set[str] = set()
    for rec in sorted((r for r in records if r["id"] in split_of), key=lambda r: line_of[r["id"]]):
        patient, split, line = rec["patient_id"], split_of[rec["id"]], line_of[rec["id"]]
        other, other_line = first.setdefault(patient, (split, line))
        if other != split and patient not in reported:
            reported.add(patient)
            message = f"patient {patient} is in {split} here but in {other} on line {other_line}"
            message += " (a patient's images must share one split)"
            problems.append(Problem(name, line, "split", message))
    absent = [
        f"{r['id']} (dataset.csv line {r['line']})" if "line" in r else r["id"]
        for r in records
        if r["id"] not in line_of
    ]
    if absent:
        shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
        message = (
            f"{len(absent)} image(s) of the dataset are not in the split: {shown}; delete the split file to remake it"
        )
        problems.append(Problem(name, None, "image", message))
    return split_of, problems


def split_class_problems(
    records: list[dict], assignment: dict[str, str], file: str | Path, column: str, what: str = "the split"
) -> list[Problem]:
    """An error (at ``file``, ``column``) for each of train/val/test without both a normal and a fracture image;
    ``assignment`` maps image id to split name, ``what`` names the split in the message."""
    problems = []
    for split in SPLITS:
        labels = {int(r["label"]) for r in records if assignment.get(r["id"]) == split}
        missing = [f"{kind} (label {label})" for label, kind in ((0, "normal"), (1, "fracture")) if label not in labels]
        if missing:
            message = f"{what} leaves {split} without a {' or a '.join(missing)} image (every split needs both)"
            problems.append(Problem(str(file), None, column, message))
    return problems


def split_records(
    dataset_dir: str | Path, split_file: str | Path, split: str, fractions=None, seed: int | None = None
) -> list[dict]:
    """The dataset's records of one split (the split file is created, or rebuilt, by ``ensure_split``); raise a
    ``DatasetError`` listing the split file's errors (``check_split_file``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    split_file = ensure_split(dataset_dir, split_file, fractions, seed)
    records = read_dataset(dataset_dir)
    raise_if_errors(check_split_file(records, split_file)[1], str(split_file))
    mapping = read_split(split_file)
    return [r for r in records if mapping[r["id"]] == split]
