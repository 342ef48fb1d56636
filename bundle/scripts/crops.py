"""Nasal bone crops: the pre-processing step between the detector and every later stage.

Each image is cropped to its nasal bone box (the detector's box, squared, or the landmark box when
the config says so) and resampled to ``size x size``. Crops are cached as 16-bit PNGs (named after the
image's relative path) with their fracture masks and a ``crops.csv`` in a folder keyed by the
fingerprint of what they were made from (``scripts.fingerprint``); the classifier and G-D-C stages read
that cache. ``scripts.geometry.paste_back`` maps anything computed on a crop onto the original image's pixel grid.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import ignite.distributed as idist
import numpy as np
from PIL import Image

from . import fingerprint
from .dataset import landmarks, unique_stems
from .geometry import DEFAULT_MARGIN, crop_box, landmark_box, squarify
from .imageio import load_xray, save_xray
from .splits import SPLITS, ensure_split, split_records

logger = logging.getLogger(__name__)
CROPS_VERSION = 2  # 2: crop names from the image's relative path; keyed cache folders
CROP_COLUMNS = ("image", "mask", "label", "patient_id", "split", "source_image", "x1", "y1", "x2", "y2", "box_source")


def _boxes_from_landmarks(records: list[dict], margin: float) -> dict[str, tuple[np.ndarray, float]]:
    return {r["id"]: (landmark_box(*landmarks(r), margin=margin), 1.0) for r in records}


def _boxes_from_detector(records: list[dict], detector) -> dict[str, tuple[np.ndarray | None, float]]:
    out = {}
    for r in records:
        box, conf = detector.predict(load_xray(r["image"]))
        out[r["id"]] = (None if box is None else squarify(box), float(conf))
    return out


def ensure_crops(
    dataset_dir: str,
    split_file: str,
    out_dir: str,
    size: int,
    source: str = "detector",
    detector_weights: str | None = None,
    margin: float = DEFAULT_MARGIN,
    fallback_to_landmarks: bool = False,
    detector_kwargs: dict | None = None,
    fractions: list[float] | None = None,
    seed: int | None = None,
) -> Path:
    """Build (or reuse) the crop cache of every split; return the path of its ``crops.csv``.

    The cache lives in ``<out_dir>_<fingerprint>``, keyed by what the crops are made from: the split file
    (created here with ``fractions`` and ``seed`` if absent, see ``scripts.splits.ensure_split``), the dataset
    (``dataset.csv`` and its files), size, margin, box source and the detector weights' sha256. A cache whose
    recorded fingerprint matches is reused; otherwise a new folder is written and the log says what changed.

    ``source`` is ``"detector"`` (boxes from the trained detector at ``detector_weights``) or
    ``"landmarks"`` (ground-truth landmark boxes). With ``source="detector"`` and no weights, the
    landmark boxes are used only if ``fallback_to_landmarks`` is true; otherwise it is an error.
    Images where the detector finds nothing fall back to their landmark box and are counted in
    ``crops.json``, which records the box source actually used. Under DDP, rank 0 builds it first; the other ranks
    then find it.
    """
    with idist.one_rank_first():
        return _ensure_crops(
            dataset_dir,
            split_file,
            out_dir,
            size,
            source,
            detector_weights,
            margin,
            fallback_to_landmarks,
            detector_kwargs,
            fractions,
            seed,
        )


def _ensure_crops(
    dataset_dir: str,
    split_file: str,
    out_dir: str,
    size: int,
    source: str,
    detector_weights: str | None,
    margin: float,
    fallback_to_landmarks: bool,
    detector_kwargs: dict | None,
    fractions: list[float] | None,
    seed: int | None,
) -> Path:
    ensure_split(dataset_dir, split_file, fractions, seed)
    parts = crop_parts(dataset_dir, split_file, size, source, detector_weights, margin, fallback_to_landmarks)
    parts["detector_kwargs"] = fingerprint.digest(detector_kwargs or {})
    out = Path(f"{Path(out_dir)}_{fingerprint.combine(parts)}")
    csv_path = out / "crops.csv"
    if csv_path.is_file() and fingerprint.matches(out, parts)[0]:
        return csv_path
    logger.info("crops: building %s: %s", out, _why_new(Path(out_dir), parts))
    if out.exists():
        shutil.rmtree(out)
    if source not in ("detector", "landmarks"):
        raise ValueError(f"crop source must be 'detector' or 'landmarks', got '{source}'")
    if source == "detector" and not (detector_weights and Path(detector_weights).is_file()):
        if not fallback_to_landmarks:
            raise FileNotFoundError(
                f"detector weights not found at {detector_weights}: train the detector first, or set "
                "crop_source to 'landmarks' (or crop_fallback_to_landmarks to true) to crop on landmark boxes"
            )
        logger.warning("detector weights %s missing: cropping on landmark boxes instead", detector_weights)
        source = "landmarks"
    detector = None
    if source == "detector":
        from .detector import NasalBoneDetector

        detector = NasalBoneDetector(detector_weights, **(detector_kwargs or {}))
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows, missed = [], 0
    by_split = {s: split_records(dataset_dir, split_file, s) for s in SPLITS}
    stems = unique_stems([r["id"] for records in by_split.values() for r in records])
    for split, records in by_split.items():
        gt = _boxes_from_landmarks(records, margin)
        boxes = gt if detector is None else _boxes_from_detector(records, detector)
        for r in records:
            box, _ = boxes[r["id"]]
            used = source
            if box is None:
                box, used, missed = gt[r["id"]][0], "landmarks", missed + 1
            stem = stems[r["id"]]
            img_path = save_xray(out / "images" / stem, crop_box(load_xray(r["image"]), box, size), "png16")
            mask_rel = ""
            if r["fracture_mask"]:
                mask = np.asarray(Image.open(r["fracture_mask"]).convert("L"), dtype=np.float32) / 255.0
                crop_mask = (crop_box(mask, box, size) >= 0.5).astype(np.uint8) * 255
                Image.fromarray(crop_mask).save(out / "masks" / f"{stem}.png")
                mask_rel = f"masks/{stem}.png"
            rows.append(
                dict(
                    zip(
                        CROP_COLUMNS,
                        (
                            img_path.relative_to(out).as_posix(),
                            mask_rel,
                            r["label"],
                            r["patient_id"],
                            split,
                            r["id"],
                            *np.round(box, 2),
                            used,
                        ),
                        strict=True,
                    )
                )
            )
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CROP_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    info = {"box_source": source, "size": size, "margin": margin, "images": len(rows), "detector_misses": missed}
    (out / "crops.json").write_text(json.dumps(info, indent=2))
    inputs = {"dataset_dir": str(Path(dataset_dir).resolve()), "split_file": str(split_file), "images": len(rows)}
    fingerprint.record(out, parts, {**inputs, "detector_weights": str(detector_weights or "")})
    logger.info("wrote %d crops (%s boxes, %d detector misses) to %s", len(rows), source, missed, out)
    return csv_path


def crop_parts(
    dataset_dir: str | Path,
    split_file: str | Path,
    size: int,
    source: str,
    detector_weights: str | Path | None,
    margin: float,
    fallback_to_landmarks: bool = False,
) -> dict:
    """What a crop cache is made from (the parts of its fingerprint)."""
    detector = fingerprint.file_fingerprint(detector_weights) if source == "detector" and detector_weights else None
    return {
        "split": fingerprint.file_fingerprint(split_file),
        "dataset": fingerprint.dataset_fingerprint(dataset_dir),
        "size": int(size),
        "margin": round(float(margin), 6),
        "source": source,
        "fallback_to_landmarks": bool(fallback_to_landmarks),
        "detector_weights": detector,
        "version": CROPS_VERSION,
    }


def _why_new(out_dir: Path, parts: dict) -> str:
    """Why no cache fits: what differs from the newest keyed cache beside it (``<out_dir>_*``)."""
    caches = [p for p in out_dir.parent.glob(f"{out_dir.name}_*") if fingerprint.read(p)]
    if not caches:
        return "no crop cache yet"
    newest = max(caches, key=lambda p: fingerprint.sidecar(p).stat().st_mtime)
    return f"{fingerprint.why(fingerprint.read(newest), parts) or 'incomplete cache'} (since {newest.name})"


def crop_records(crops_csv: str | Path, split: str, label: int | None = None) -> list[dict]:
    """Data dicts (``image``, ``mask``, ``label``, ``patient_id``, ``box``...) of one split of the crop cache."""
    root = Path(crops_csv).parent
    out = []
    with open(crops_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] != split or (label is not None and int(row["label"]) != label):
                continue
            out.append(
                {
                    "image": str(root / row["image"]),
                    "mask": str(root / row["mask"]) if row["mask"] else "",
                    "label": int(row["label"]),
                    "patient_id": row["patient_id"],
                    "source_image": row["source_image"],
                    "box": [float(row[k]) for k in ("x1", "y1", "x2", "y2")],
                    "box_source": row["box_source"],
                }
            )
    return out
