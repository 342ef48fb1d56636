"""Train/validation/test splits grouped by patient and stratified by label, written to disk once.

A patient's label is the maximum of its images' labels. Patients of each label are shuffled with
``seed`` and cut by ``fractions``, so no patient appears in two splits and every split keeps the
dataset's fracture rate. The split is saved as ``split.csv`` (``image,patient_id,label,split``) and
every stage reads the same file; ``split.fingerprint.json`` beside it records what it was made from
(``scripts.fingerprint``), so that a changed dataset, ``fractions`` or ``seed`` rebuild it.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import fingerprint
from .dataset import read_dataset

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
    recorded = fingerprint.read(split_file) if split_file.is_file() else None
    if split_file.is_file() and recorded is None:
        logger.info("%s has no fingerprint (made by hand?): used as it is", split_file)
        return split_file
    old = (recorded or {}).get("parts") or {}
    fractions = list(fractions) if fractions is not None else old.get("fractions", DEFAULT_FRACTIONS)
    seed = seed if seed is not None else old.get("seed", 0)
    parts = split_parts(records, fractions, seed)
    reason = fingerprint.why(recorded, parts) if split_file.is_file() else "no split file yet"
    if reason:
        if split_file.is_file():
            logger.info("%s: rebuilding the split: %s", split_file, reason)
        write_split(split_file, records, assign_splits(records, tuple(fractions), seed))
        inputs = {"dataset_dir": str(Path(dataset_dir).resolve()), "images": len(records), "fractions": fractions}
        fingerprint.record(split_file, parts, {**inputs, "seed": seed})
    return split_file


def read_split(split_file: str | Path) -> dict[str, str]:
    """Map image (relative path) to its split name."""
    with open(split_file, newline="") as f:
        return {row["image"]: row["split"] for row in csv.DictReader(f)}


def split_records(
    dataset_dir: str | Path, split_file: str | Path, split: str, fractions=None, seed: int | None = None
) -> list[dict]:
    """The dataset's records of one split (the split file is created, or rebuilt, by ``ensure_split``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    mapping = read_split(ensure_split(dataset_dir, split_file, fractions, seed))
    records = read_dataset(dataset_dir)
    unknown = [r["id"] for r in records if r["id"] not in mapping]
    if unknown:
        raise ValueError(
            f"{split_file}: {len(unknown)} image(s) of the dataset are not in the split, e.g. {unknown[0]}; "
            "delete the split file to rebuild it"
        )
    return [r for r in records if mapping[r["id"]] == split]
