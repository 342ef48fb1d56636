"""Per-image outputs of the inference bundle (postprocessing transform) and the run's summary (evaluator handler).

``WriteFractureOutputsd`` pastes the crop maps back onto the input's grid and writes ``<stem>.json``, the region,
heatmap and overlay PNGs and (optionally) DICOM SC + SR; ``InferenceSummary`` writes ``summary.csv`` and logs the
run to MLflow when the evaluator completes.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.transforms import MapTransform
from PIL import Image

from .geometry import paste_back
from .imageio import image_format
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


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _save_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def _write_dicom(picture, res: dict, path: Path, out_dir: Path, stem: str, keep_identity: bool) -> dict[str, str]:
    import pydicom

    from .dicom_out import write_dicom_outputs

    source = None
    if image_format(path) == "dicom":
        source = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    paths = write_dicom_outputs(
        picture,
        {**res, "region_mask": res["region"]},
        out_dir,
        stem,
        source=source,
        keep_patient_identity=keep_identity,
    )
    return {k: Path(v).name for k, v in paths.items()}


class WriteFractureOutputsd(MapTransform):
    """Postprocessing of one decollated item: maps back on the input grid, JSON + PNGs (+ DICOM) written.

    Reads ``image_key`` (the full image, channel first), ``pred`` (``FractureInferer``'s logit and crop maps),
    ``box``, ``detector_box``, ``detector_confidence``, ``box_source``, ``path`` and ``stem``; an item with
    ``error`` (or any failure here) becomes ``{"image", "error"}``. Adds ``record`` (what the JSON holds) and
    ``record_file`` (its name).
    """

    def __init__(
        self,
        output_dir: str | Path,
        threshold: float,
        image_key: str = "xray",
        dicom_out: bool = False,
        keep_patient_identity: bool = False,
    ) -> None:
        super().__init__(keys=image_key)
        self.out, self.threshold, self.image_key = Path(output_dir), float(threshold), image_key
        self.dicom_out, self.keep_identity = bool(dicom_out), bool(keep_patient_identity)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        path, stem = Path(str(d["path"])), str(d["stem"])
        self.out.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {"image": str(path)}
        try:
            if d.get("error") is not None:
                raise _ItemError(str(d["error"]))
            record = self._write(d, path, stem)
        except Exception as err:  # one bad file must not stop the batch
            message = str(err) if isinstance(err, _ItemError) else f"{type(err).__name__}: {err}"
            if not isinstance(err, _ItemError):
                logger.warning("%s: %s", path, message)
            record = {"image": str(path), "error": message}
        (self.out / f"{stem}.json").write_text(json.dumps(record, indent=2))
        d["record"], d["record_file"] = record, f"{stem}.json"
        return d

    def _write(self, d: dict[str, Any], path: Path, stem: str) -> dict[str, Any]:
        image = _numpy(d[self.image_key]).astype(np.float32)
        image = image[0] if image.ndim == 3 else image
        found = str(d.get("box_source")) != "none"
        res: dict[str, Any] = {
            "nasal_bone_box": None,
            "detector_confidence": float(_numpy(d["detector_confidence"])),
            "fracture_probability": None,
            "fracture": None,
            "threshold": self.threshold,
            "heatmap": np.zeros(image.shape, np.float32),
            "region": np.zeros(image.shape, bool),
        }
        if found:
            square = _numpy(d["box"]).astype(float)  # the square box the crop was taken from
            pred = d["pred"]  # FractureInferer's {"pred": logit, "heatmap", "region"} for this item
            prob = float(torch.sigmoid(torch.as_tensor(pred["pred"]).float().flatten()[0]))
            if math.isnan(prob):
                raise RuntimeError("the classifier gave no output for this image")
            res.update(
                nasal_bone_box=[round(float(v), 1) for v in _numpy(d["detector_box"])],
                fracture_probability=prob,
                fracture=prob >= self.threshold,
                heatmap=paste_back(_numpy(pred["heatmap"])[0].astype(np.float32), square, image.shape),
                region=paste_back(_numpy(pred["region"])[0].astype(np.float32), square, image.shape, order=0) > 0.5,
            )
        record: dict[str, Any] = {"image": str(path)}
        for key in ("nasal_bone_box", "detector_confidence", "fracture_probability", "fracture", "threshold"):
            record[key] = res[key]
        _save_png(self.out / f"{stem}_region.png", res["region"].astype(np.uint8) * 255)
        _save_png(self.out / f"{stem}_heatmap.png", np.round(np.clip(res["heatmap"], 0, 1) * 255).astype(np.uint8))
        picture = overlay(
            image,
            res["nasal_bone_box"],
            res["fracture_probability"],
            res["fracture"],
            res["threshold"],
            res["heatmap"],
            res["region"],
        )
        _save_png(self.out / f"{stem}_overlay.png", picture)
        record.update(
            region_mask=f"{stem}_region.png",
            heatmap=f"{stem}_heatmap.png",
            overlay=f"{stem}_overlay.png",
            image_size=[int(image.shape[1]), int(image.shape[0])],
        )
        if self.dicom_out:
            record["dicom"] = _write_dicom(picture, res, path, self.out, stem, self.keep_identity)
        return record


class _ItemError(Exception):
    """An error recorded upstream (preprocessing), passed through to the item's JSON as is."""


class InferenceSummary:
    """Evaluator handler: logs each image's outcome, then writes ``summary.csv`` and the MLflow run on COMPLETED.

    Args:
        output_dir: where ``summary.csv`` (and the default sqlite MLflow store) go.
        tracking_uri: MLflow tracking URI; None uses ``sqlite:///<output_dir>/mlflow.db``.
        experiment_name: MLflow experiment.
        params: logged as the run's params (e.g. models folder, device).
        total: number of input files (for the progress log).
    """

    def __init__(
        self,
        output_dir: str | Path,
        tracking_uri: str | None = None,
        experiment_name: str = "nasal_bone_fracture",
        params: dict[str, Any] | None = None,
        total: int | None = None,
    ) -> None:
        self.out, self.tracking_uri, self.experiment_name = Path(output_dir), tracking_uri, experiment_name
        self.params, self.total = dict(params or {}), total
        self.rows: list[dict[str, Any]] = []
        self.start = time.perf_counter()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def started(self, engine: Engine) -> None:
        self.rows, self.start = [], time.perf_counter()

    def collect(self, engine: Engine) -> None:
        for item in engine.state.output or []:
            rec = item["record"]
            status = "error" if "error" in rec else "ok"
            row = {**{k: rec.get(k, "") for k in SUMMARY_COLUMNS}, "status": status, "output": item["record_file"]}
            self.rows.append(row)
            prob = rec.get("fracture_probability")
            outcome = rec.get("error") or (
                "no nasal bone found" if prob is None else f"p={prob:.3f} fracture={rec['fracture']}"
            )
            logger.info("[%d/%s] %s: %s", len(self.rows), self.total or "?", Path(rec["image"]).name, outcome)

    def write(self, engine: Engine | None = None) -> Path:
        """Write ``summary.csv`` and log the run (images, errors, flagged, seconds per image) to MLflow."""
        from .tracking import Tracker, default_tracking_uri, run_name

        self.out.mkdir(parents=True, exist_ok=True)
        summary = self.out / "summary.csv"
        with open(summary, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        n = len(self.rows)
        errors = sum(r["status"] == "error" for r in self.rows)
        seconds = (time.perf_counter() - self.start) / max(1, n)
        logger.info("%d images, %d errors, %.2f s per image; summary: %s", n, errors, seconds, summary)
        tracker = Tracker(self.tracking_uri or default_tracking_uri(self.out), self.experiment_name, self.out)
        run = tracker.start(run_name("inference"), tags={"job": "inference"})
        tracker.params(run, self.params)
        flagged = sum(str(r["fracture"]) == "True" for r in self.rows)
        tracker.metrics(run, {"images": n, "errors": errors, "flagged_fracture": flagged, "seconds_per_image": seconds})
        tracker.artifact(run, summary)
        tracker.end(run)
        return summary
