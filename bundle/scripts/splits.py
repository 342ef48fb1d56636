"""Train/validation/test splits grouped by patient and stratified by label, written to disk once.

A patient's label is the maximum of its images' labels. Patients of each label are shuffled with
``seed`` and cut by ``fractions``, so no patient appears in two splits and every split keeps the
dataset's fracture rate. The split is saved as ``split.csv`` (``image,patient_id,label,split``) and
every stage reads the same file.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from .dataset import read_dataset

SPLITS = ("train", "val", "test")


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


def ensure_split(dataset_dir: str | Path, split_file: str | Path, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> Path:
    """Create ``split_file`` for ``dataset_dir`` unless it exists; return its path."""
    split_file = Path(split_file)
    if not split_file.is_file():
        records = read_dataset(dataset_dir)
        write_split(split_file, records, assign_splits(records, tuple(fractions), seed))
    return split_file


def read_split(split_file: str | Path) -> dict[str, str]:
    """Map image (relative path) to its split name."""
    with open(split_file, newline="") as f:
        return {row["image"]: row["split"] for row in csv.DictReader(f)}


def split_records(dataset_dir: str | Path, split_file: str | Path, split: str, fractions=(0.8, 0.1, 0.1), seed=0):
    """The dataset's records of one split (the split file is created on first use)."""
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
