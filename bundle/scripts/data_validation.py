"""Every problem of a dataset folder in one report, before anything trains (the ``validate-data`` command).

``validate_dataset`` collects, in one pass, with file, line and column:

- ``dataset.csv`` (``scripts.dataset.scan_dataset``): encoding, columns, empty or duplicate images, empty
  ``patient_id``, labels, landmarks, missing files;
- each image, decoded once with ``scripts.imageio.load_xray``: unreadable, landmarks outside it;
- each mask: unreadable, not on its image's grid; empty (a warning);
- the split (``scripts.splits``): an existing split file as training would use it (a patient in two splits, an
  unknown split name, images listed twice or not at all), or the split training would make (same fractions and
  seed); either way every one of train/val/test needs a normal and a fracture image.

``require_valid_dataset`` is training's first step: it logs every problem and raises one ``DatasetError`` listing
the errors. ``validate_command`` is what ``configs/validate_data.yaml`` runs: the same report, exit status 1 on
errors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import (
    CSV_NAME,
    ERROR,
    LANDMARK_COLUMNS,
    WARNING,
    DatasetError,
    Problem,
    raise_if_errors,
    scan_dataset,
)
from .imageio import load_xray
from .splits import assign_splits, check_split_file, split_class_problems, split_plan

logger = logging.getLogger("nasal.data_validation")
__all__ = ["Problem", "require_valid_dataset", "validate_command", "validate_dataset"]


RowProblems = list[tuple[str, str, str]]  # (column, message, severity) of one row


def _landmark_problems(rec: dict, shape: tuple[int, int]) -> RowProblems:
    """Landmarks outside the image: pixel centres are at 0..cols-1 (x) and 0..rows-1 (y), so the image spans
    -0.5..cols-0.5 and -0.5..rows-0.5."""
    rows, cols = shape
    found = []
    for key in LANDMARK_COLUMNS:
        size, axis = (cols, "x") if key.endswith("_x") else (rows, "y")
        if key in rec and not -0.5 <= rec[key] <= size - 0.5:
            message = f"{rec[key]:g} is outside the {cols}x{rows} image ({axis} spans -0.5..{size - 0.5:g})"
            found.append((key, message, ERROR))
    return found


def _mask_problems(rec: dict, rel: str, shape: tuple[int, int] | None) -> RowProblems:
    """An unreadable mask, one of another size than its image (``shape`` ``(rows, cols)``, None if unknown), or
    an empty mask of a fracture image (a warning)."""
    try:
        with Image.open(rec["fracture_mask"]) as im:
            im.load()
            width, height = im.size
            empty = not np.asarray(im.convert("L")).any()
    except Exception as err:  # any decoder failure is the file's problem: reported, not raised
        return [("fracture_mask", f"{rel}: not a readable image ({type(err).__name__}: {err})", ERROR)]
    found = []
    if shape is not None and (height, width) != shape:
        message = f"{rel} is {width}x{height} pixels, its image {shape[1]}x{shape[0]} (a mask is on the image's grid)"
        found.append(("fracture_mask", message, ERROR))
    if empty and rec["label"] == 1:
        found.append(("fracture_mask", f"{rel} has no non-zero pixel", WARNING))
    return found


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path


def image_problems(records: list[dict], dataset_dir: str | Path) -> list[Problem]:
    """Decode every listed image and mask once: unreadable images, landmarks outside their image, masks that are
    unreadable or of another size, empty masks of fracture images (warning). Files that do not exist are
    ``scan_dataset``'s to report."""
    root = Path(dataset_dir)
    csv_path = str(root / CSV_NAME)
    problems, shapes = [], {}
    logger.info("%s: reading %d images", csv_path, len(records))
    for rec in records:
        found: RowProblems = []
        if rec["id"].strip() and Path(rec["image"]).is_file():
            if rec["image"] not in shapes:
                try:
                    shapes[rec["image"]] = load_xray(rec["image"]).shape
                except Exception as err:  # XrayReadError, or any decoder failure: reported, not raised
                    shapes[rec["image"]] = None
                    found.append(("image", f"{rec['id']}: {getattr(err, 'problem', None) or err}", ERROR))
            if shapes[rec["image"]] is not None:
                found += _landmark_problems(rec, shapes[rec["image"]])
        if rec["fracture_mask"] and Path(rec["fracture_mask"]).is_file():
            found += _mask_problems(rec, _relative(rec["fracture_mask"], root), shapes.get(rec["image"]))
        problems += [Problem(csv_path, rec["line"], column, message, sev) for column, message, sev in found]
    return problems


def split_problems(
    records: list[dict],
    csv_path: str | Path,
    split_file: str | Path | None = None,
    fractions: Sequence[float] | None = None,
    seed: int | None = None,
) -> list[Problem]:
    """The split training would use: an existing ``split_file`` as it is (``check_split_file``), else the one
    ``scripts.splits.ensure_split`` would make with ``fractions`` and ``seed``; every split needs both classes."""
    records = [r for r in records if r["label"] is not None]
    reason, fractions, seed, _ = split_plan(records, split_file, fractions, seed)
    if not reason:  # the existing split file is used as it is
        assignment, problems = check_split_file(records, split_file)
        return problems + split_class_problems(records, assignment, split_file, "split", Path(split_file).name)
    try:
        patient_split = assign_splits(records, tuple(fractions), int(seed))
    except ValueError as err:
        return [Problem(str(csv_path), None, None, f"cannot plan the split: {err}")]
    assignment = {r["id"]: patient_split[r["patient_id"]] for r in records}
    shown = "/".join(f"{f:g}" for f in fractions)
    what = f"the split training would make (fractions {shown}, seed {seed})"
    return split_class_problems(records, assignment, csv_path, "label", what)


def validate_dataset(
    dataset_dir: str | Path,
    split_file: str | Path | None = None,
    fractions: Sequence[float] | None = None,
    seed: int | None = None,
    check_images: bool = True,
) -> list[Problem]:
    """Every problem of the dataset folder (errors and warnings), ``dataset.csv``'s first, by line.

    ``split_file``, ``fractions`` and ``seed`` are training's (``output_dir/split.csv``, ``split_fractions``,
    ``split_seed``); without ``split_file`` the split is planned with ``fractions`` (default 0.8/0.1/0.1) and
    ``seed`` (default 0). ``check_images=False`` skips decoding images and masks.
    """
    csv_path = str(Path(dataset_dir) / CSV_NAME)
    records, problems = scan_dataset(dataset_dir)
    if records:
        if check_images:
            problems += image_problems(records, dataset_dir)
        problems += split_problems(records, csv_path, split_file, fractions, seed)
    return sorted(problems, key=lambda p: (p.file != csv_path, p.line or 0))


def require_valid_dataset(
    dataset_dir: str | Path,
    split_file: str | Path | None = None,
    fractions: Sequence[float] | None = None,
    seed: int | None = None,
) -> list[Problem]:
    """Log every problem of the dataset folder; raise one ``DatasetError`` (a ``ValueError``) listing the errors if
    there are any, else return the warnings. Arguments as ``validate_dataset``'s."""
    problems = validate_dataset(dataset_dir, split_file, fractions, seed)
    for p in problems:
        (logger.error if p.is_error else logger.warning)("%s", p)
    errors = sum(p.is_error for p in problems)
    logger.info("%s: %d error(s), %d warning(s)", dataset_dir, errors, len(problems) - errors)
    raise_if_errors(problems, f"dataset {dataset_dir}")
    return problems


def validate_command(
    dataset_dir: str | Path,
    split_file: str | Path | None = None,
    fractions: Sequence[float] | None = None,
    seed: int | None = None,
) -> list[Problem]:
    """The ``validate-data`` command: ``require_valid_dataset``'s report, then exit with status 1 on errors."""
    try:
        return require_valid_dataset(dataset_dir, split_file, fractions, seed)
    except DatasetError as err:
        summary = str(err).splitlines()[0].rstrip(":")
        raise SystemExit(f"validate-data: {summary} (listed above); training would refuse it") from None
