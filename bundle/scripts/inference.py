"""End-to-end inference on full head X-rays: box, fracture probability, fracture-region map, overlay.

For each input image ``OUT/<stem>.json`` holds ``nasal_bone_box`` (input pixels, null if none),
``detector_confidence``, ``fracture_probability``, ``fracture`` (at the validated threshold stored
with the classifier), ``threshold``, ``region_mask`` / ``heatmap`` / ``overlay`` (PNG paths relative
to OUT, on the input's pixel grid), or ``error`` when the image cannot be processed. A bad file never
stops the batch; ``OUT/summary.csv`` lists every file.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .geometry import crop_box, paste_back, squarify
from .imageio import SUFFIXES, _is_dicom, _suffix, load_xray
from .masks import region_map
from .visualise import overlay

logger = logging.getLogger("nasal.inference")
SUMMARY_COLUMNS = (
    "image",
    "status",
    "nasal_bone_box",
    "detector_confidence",
    "fracture_probability",
    "fracture",
    "threshold",
    "output",
    "error",
)


class FracturePipeline:
    """Detector -> crop -> classifier C -> G-D-C step-2 region map, from the weights in ``models_dir``."""

    def __init__(self, models_dir: str | Path, device: str | torch.device | None = None) -> None:
        from .classifier import load_classifier
        from .detector import NasalBoneDetector
        from .masks import load_region_model

        models = Path(models_dir)
        missing = [n for n in ("detector.pt", "classifier.pt", "gdc2.pt") if not (models / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{models}: missing trained weights {', '.join(missing)}; train first "
                "(python -m monai.bundle run training --config_file bundle/configs/train.yaml)"
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.detector = NasalBoneDetector(str(models / "detector.pt"), device=self.device)
        self.classifier, info = load_classifier(models / "classifier.pt", self.device)
        self.threshold = float(info["threshold"])
        self.crop_size = int(info.get("crop_size", 128))
        self.localiser = load_region_model(models / "gdc2.pt", self.device)

    @torch.no_grad()
    def __call__(self, image01: np.ndarray) -> dict[str, Any]:
        """Results for one ``(rows, cols)`` image in [0, 1]; maps are on the image's grid."""
        box, conf = self.detector.predict(image01)
        out: dict[str, Any] = {
            "nasal_bone_box": None,
            "detector_confidence": float(conf),
            "fracture_probability": None,
            "fracture": None,
            "threshold": self.threshold,
            "heatmap": np.zeros(image01.shape, np.float32),
            "region": np.zeros(image01.shape, bool),
        }
        if box is None:
            return out
        square = squarify(box)
        crop = torch.from_numpy(crop_box(image01, square, self.crop_size))[None, None].to(self.device)
        prob = float(torch.sigmoid(self.classifier(crop)).item())
        heat, region = region_map(self.localiser, crop)
        out.update(
            nasal_bone_box=[round(float(v), 1) for v in box],
            fracture_probability=prob,
            fracture=prob >= self.threshold,
            heatmap=paste_back(heat[0, 0].cpu().numpy(), square, image01.shape),
            region=paste_back(region[0, 0].float().cpu().numpy(), square, image01.shape, order=0) > 0.5,
        )
        return out


def list_inputs(input_path: str | Path) -> list[Path]:
    """A single file, or the image files of a folder (recursively; DICOM without a suffix included)."""
    path = Path(input_path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input {path} is neither a file nor a folder")
    files = []
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if _suffix(f) in SUFFIXES or (f.suffix == "" and _is_dicom(f)):
            files.append(f)
        else:
            logger.info("skipping %s: not an image file type", f)
    return files


def _stem(path: Path, used: set[str]) -> str:
    stem = path.name.split(".")[0]
    while stem in used:
        stem = f"{stem}_{_suffix(path).strip('.').replace('.', '_') or 'file'}"
    used.add(stem)
    return stem


def _save_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def process_file(
    pipeline: FracturePipeline,
    path: Path,
    out_dir: Path,
    stem: str,
    dicom_out: bool = False,
    keep_patient_identity: bool = False,
) -> dict[str, Any]:
    """Run the pipeline on one file and write its JSON and PNGs; errors become an ``error`` entry."""
    record: dict[str, Any] = {"image": str(path)}
    try:
        image = load_xray(path)
        res = pipeline(image)
        for key in ("nasal_bone_box", "detector_confidence", "fracture_probability", "fracture", "threshold"):
            record[key] = res[key]
        _save_png(out_dir / f"{stem}_region.png", res["region"].astype(np.uint8) * 255)
        _save_png(out_dir / f"{stem}_heatmap.png", np.round(np.clip(res["heatmap"], 0, 1) * 255).astype(np.uint8))
        picture = overlay(
            image,
            res["nasal_bone_box"],
            res["fracture_probability"],
            res["fracture"],
            res["threshold"],
            res["heatmap"],
            res["region"],
        )
        _save_png(out_dir / f"{stem}_overlay.png", picture)
        record.update(
            region_mask=f"{stem}_region.png",
            heatmap=f"{stem}_heatmap.png",
            overlay=f"{stem}_overlay.png",
            image_size=[int(image.shape[1]), int(image.shape[0])],
        )
        if dicom_out:
            record["dicom"] = _write_dicom(picture, res, path, out_dir, stem, keep_patient_identity)
    except Exception as err:  # one bad file must not stop the batch
        logger.warning("%s: %s", path, err)
        record = {"image": str(path), "error": f"{type(err).__name__}: {err}"}
    (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=2))
    return record


def _write_dicom(picture, res, path: Path, out_dir: Path, stem: str, keep_patient_identity: bool) -> dict[str, str]:
    import pydicom

    from .dicom_out import write_dicom_outputs

    source = None
    if _suffix(path) in (".dcm", ".dicom") or _is_dicom(path):
        source = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    paths = write_dicom_outputs(
        picture,
        {**res, "region_mask": res["region"]},
        out_dir,
        stem,
        source=source,
        keep_patient_identity=keep_patient_identity,
    )
    return {k: Path(v).name for k, v in paths.items()}


def run_inference(
    input_path: str | Path,
    output_dir: str | Path,
    models_dir: str | Path,
    device: str | torch.device | None = None,
    dicom_out: bool = False,
    keep_patient_identity: bool = False,
    tracking_uri: str | None = None,
    experiment_name: str = "nasal_bone_fracture",
) -> Path:
    """Process every input file, write per-image outputs and ``summary.csv``; return the summary's path."""
    from .tracking import Tracker, default_tracking_uri, run_name

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = list_inputs(input_path)
    pipeline = FracturePipeline(models_dir, device)
    used: set[str] = set()
    rows, start = [], time.perf_counter()
    for i, path in enumerate(files, 1):
        stem = _stem(path, used)
        rec = process_file(pipeline, path, out, stem, dicom_out, keep_patient_identity)
        status = "error" if "error" in rec else "ok"
        rows.append({**{k: rec.get(k, "") for k in SUMMARY_COLUMNS}, "status": status, "output": f"{stem}.json"})
        prob = rec.get("fracture_probability")
        outcome = rec.get("error") or (
            "no nasal bone found" if prob is None else f"p={prob:.3f} fracture={rec['fracture']}"
        )
        logger.info("[%d/%d] %s: %s", i, len(files), path.name, outcome)
    summary = out / "summary.csv"
    with open(summary, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    errors = sum(r["status"] == "error" for r in rows)
    seconds = time.perf_counter() - start
    logger.info(
        "%d images, %d errors, %.2f s per image; summary: %s", len(rows), errors, seconds / max(1, len(rows)), summary
    )
    uri = tracking_uri or default_tracking_uri(out)
    tracker = Tracker(uri, experiment_name, out)
    run = tracker.start(run_name("inference"), tags={"job": "inference"})
    tracker.params(run, {"models_dir": str(models_dir), "dicom_out": dicom_out, "device": str(pipeline.device)})
    flagged = sum(str(r["fracture"]) == "True" for r in rows)
    tracker.metrics(
        run,
        {
            "images": len(rows),
            "errors": errors,
            "flagged_fracture": flagged,
            "seconds_per_image": seconds / max(1, len(rows)),
        },
    )
    tracker.artifact(run, summary)
    tracker.end(run)
    return summary
