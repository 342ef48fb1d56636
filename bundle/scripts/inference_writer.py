"""Per-image outputs of the inference bundle (postprocessing transform) and the run's summary (evaluator handler).

``WriteFractureOutputsd`` turns C's logit into the calibrated probability (the temperature stored with the weights)
and the ``finding`` (the two operating points stored with them), pastes the crop maps back onto the input's grid
(only for a ``fracture`` or ``suspicious`` finding; below the ``suspicious`` point the region mask and heatmap are
written empty) and writes ``<stem>.json``, the region, heatmap and overlay PNGs and (optionally) DICOM SC + SR;
``InferenceSummary`` appends each file's row to ``summary.csv`` as soon as it is done (its files written) and logs the
run to MLflow when the evaluator completes. No failure here stops the batch: it becomes the file's one-line ``error``
(or ``dicom_error``, when only the DICOM copies failed). Input files are named by their path relative to the input
folder (``name``), never by their absolute path.

Speed (``make bench``): PNGs are encoded by OpenCV at zlib level 1 with the SUB filter (about 6x faster than
Pillow's default level 6 for an overlay, and about as small); ``write_in_background`` writes each file's outputs in
one background thread while the networks run on the next file (the batch command; at most ``max_pending`` files
wait, so memory stays bounded), and its ``summary.csv`` row is appended once they are written. Without it (the
warm engine, ``clinic.engine``) the record is returned after its files are written.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.transforms import MapTransform

from .checkpoint import atomic_write_text
from .evaluation import FINDINGS, finding, sigmoid
from .geometry import paste_back
from .imageio import image_format
from .inference_engine import NOT_FOUND, error_message
from .visualise import overlay, to_gray8

logger = logging.getLogger("nasal.inference")
SUMMARY_COLUMNS = (
    "image",
    "status",
    "nasal_bone_box",
    "detector_confidence",
    "logit",
    "fracture_probability",
    "fracture",
    "threshold",
    "finding",
    "output",
    "error",
    "dicom_error",
)


# the JSON's findings, in this order (``finding_reason`` only for "not assessable"), then the output files
RECORD_KEYS = (
    "nasal_bone_box",
    "detector_confidence",
    "logit",
    "fracture_probability",
    "fracture",
    "threshold",
    "finding",
    "finding_reason",
    "thresholds",
    "temperature",
    "warnings",
)


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def save_png(path: Path, array: np.ndarray, level: int = 1) -> None:
    """``array`` (``(rows, cols)`` or RGB ``(rows, cols, 3)`` uint8) as a PNG: OpenCV, zlib ``level``, SUB filter."""
    image = np.ascontiguousarray(array[..., ::-1]) if array.ndim == 3 else np.ascontiguousarray(array)
    params = [cv2.IMWRITE_PNG_COMPRESSION, int(level), cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
    ok, data = cv2.imencode(".png", image, params)
    if not ok:
        raise OSError(f"cannot encode {path.name} as PNG")
    path.write_bytes(data.tobytes())


def no_timer(step: str) -> contextlib.AbstractContextManager:
    """The writer's default ``timer``: times nothing (``make bench`` sets one that records each step)."""
    return contextlib.nullcontext()


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
    """Postprocessing of one decollated item: calibrated probability and finding, maps back on the input grid,
    JSON + PNGs (+ DICOM) written.

    Reads ``image_key`` (the full image, channel first), ``pred`` (``FractureInferer``'s logit and crop maps),
    ``box``, ``detector_box``, ``detector_confidence``, ``box_source``, ``not_assessable`` (why there is no box, when
    the detector gives it), ``path``, ``name`` and ``stem``. An item
    with ``error``, or any failure here, becomes ``{"image", "error"}``; a failing DICOM output keeps the findings
    and adds ``dicom_error``; a JSON that cannot be written adds ``error`` to the summary's row. Adds ``record``
    (what the JSON holds; ``image`` is ``name``) and ``record_file`` (the JSON's name, empty if not written).

    Args:
        threshold: the main operating threshold (``fracture`` = probability >= it).
        temperature: the calibration step's: probability = ``sigmoid(logit / temperature)``.
        thresholds: ``{"suspicious": t1, "fracture": t2}`` for ``finding``; None: both at ``threshold``.
        png_compress_level: zlib level of the PNGs (0-9; 1: fast, files about as small as level 6 here).
        write_in_background: write the outputs in a background thread; the item then carries ``written`` (a
            future of ``(record, record_file)``) instead of ``record``/``record_file`` (``outcome`` reads both).
        max_pending: background mode: files waiting to be written before the next one waits for the oldest.
    """

    def __init__(
        self,
        output_dir: str | Path,
        threshold: float,
        image_key: str = "xray",
        dicom_out: bool = False,
        keep_patient_identity: bool = False,
        temperature: float = 1.0,
        thresholds: dict[str, float] | None = None,
        png_compress_level: int = 1,
        write_in_background: bool = False,
        max_pending: int = 4,
    ) -> None:
        super().__init__(keys=image_key)
        self.out, self.threshold, self.image_key = Path(output_dir), float(threshold), image_key
        self.dicom_out, self.keep_identity = bool(dicom_out), bool(keep_patient_identity)
        self.temperature = float(temperature)
        points = thresholds or {"suspicious": self.threshold, "fracture": self.threshold}
        self.thresholds = {k: float(points[k]) for k in ("suspicious", "fracture")}
        self.png_level = int(png_compress_level)
        self.timer: Callable[[str], contextlib.AbstractContextManager] = no_timer
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="nasal-writer") if write_in_background else None
        self.pending: deque[Future] = deque()
        self.max_pending = max(1, int(max_pending))

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        if self.pool is None:
            d["record"], d["record_file"] = self.outputs(d)
            return d
        while len(self.pending) >= self.max_pending:  # bounded memory: wait for the oldest file's outputs
            self.pending.popleft().result()
        written = self.pool.submit(self.outputs, d)
        self.pending.append(written)
        return {k: v for k, v in d.items() if k not in (self.image_key, "pred")} | {"written": written}

    def outputs(self, d: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Write one item's outputs; return its record (the JSON's content) and the JSON's name ("" if unwritten)."""
        path, stem = Path(str(d["path"])), str(d["stem"])
        name = str(d.get("name") or path.name)
        if d.get("error") is not None:  # preprocessing failed: its one-line message, as recorded
            record: dict[str, Any] = {"image": name, "error": str(d["error"])}
        else:
            try:
                record = self._write(d, path, name, stem)
            except Exception as err:  # one bad file must not stop the batch
                record = {"image": name, "error": error_message(err, name, str(path))}
                logger.warning("%s", record["error"])
        with self.timer("json"):
            problem = self._save_record(record, path, name, stem)
        if problem:
            record = {**record, "error": "; ".join(filter(None, [record.get("error"), problem]))}
        return record, "" if problem else f"{stem}.json"

    def _save_record(self, record: dict[str, Any], path: Path, name: str, stem: str) -> str | None:
        """Write ``<stem>.json``; return the one-line error if it could not be written."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / f"{stem}.json", json.dumps(record, indent=2))  # never half-written
        except Exception as err:  # a full disk or a bad value must not stop the batch either
            problem = error_message(err, name, str(path)).removeprefix(f"{name}: ")
            message = f"{name}: cannot write {stem}.json ({problem})"
            logger.warning("%s", message)
            return message
        return None

    def findings(self, d: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
        """The item's findings and its maps on the input's ``shape``: a region and heatmap only for a ``fracture``
        or ``suspicious`` finding (else all zero), ``finding_reason`` only for ``not assessable`` (the detector's
        ``not_assessable``: no box, or one below its confidence floor)."""
        res: dict[str, Any] = {
            "nasal_bone_box": None,
            "detector_confidence": float(_numpy(d["detector_confidence"])),
            "logit": None,
            "fracture_probability": None,
            "fracture": None,
            "threshold": self.threshold,
            "finding": finding(None, self.thresholds),
            "finding_reason": str(d.get("not_assessable") or NOT_FOUND),
            "thresholds": dict(self.thresholds),
            "temperature": self.temperature,
            "heatmap": np.zeros(shape, np.float32),
            "region": np.zeros(shape, bool),
        }
        if d.get("warnings"):  # e.g. a crop unlike the validation crops (scripts.input_guard.FlagCropIntensityd)
            res["warnings"] = [str(w) for w in d["warnings"]]
        if str(d.get("box_source")) == "none":
            return res
        pred = d["pred"]  # FractureInferer's {"pred": logit, "heatmap", "region"} for this item
        logit = float(torch.as_tensor(pred["pred"]).float().flatten()[0])
        if math.isnan(logit):
            raise RuntimeError("the classifier gave no output for this image")
        prob = float(sigmoid(logit, self.temperature))
        res.update(
            nasal_bone_box=[round(float(v), 1) for v in _numpy(d["detector_box"])],
            logit=logit,
            fracture_probability=prob,
            fracture=prob >= self.threshold,
            finding=finding(prob, self.thresholds),
        )
        del res["finding_reason"]
        if res["finding"] in ("fracture", "suspicious"):  # below the suspicious point: no region, no heatmap
            square = _numpy(d["box"]).astype(float)  # the square box the crop was taken from
            res["heatmap"] = paste_back(_numpy(pred["heatmap"])[0].astype(np.float32), square, shape)
            res["region"] = paste_back(_numpy(pred["region"])[0].astype(np.float32), square, shape, order=0) > 0.5
        return res

    def _write(self, d: dict[str, Any], path: Path, name: str, stem: str) -> dict[str, Any]:
        image = _numpy(d[self.image_key]).astype(np.float32)
        image = image[0] if image.ndim == 3 else image
        with self.timer("findings"):  # calibrated probability, finding, maps pasted back on the input's grid
            res = self.findings(d, image.shape)
        record: dict[str, Any] = {"image": name, **{k: res[k] for k in RECORD_KEYS if k in res}}
        with self.timer("map_pngs"):
            save_png(self.out / f"{stem}_region.png", res["region"].astype(np.uint8) * 255, self.png_level)
            save_png(self.out / f"{stem}_heatmap.png", to_gray8(res["heatmap"]), self.png_level)
        with self.timer("overlay"):
            picture = self._overlay(image, res)
        with self.timer("overlay_png"):
            save_png(self.out / f"{stem}_overlay.png", picture, self.png_level)
        record.update(
            region_mask=f"{stem}_region.png",
            heatmap=f"{stem}_heatmap.png",
            overlay=f"{stem}_overlay.png",
            image_size=[int(image.shape[1]), int(image.shape[0])],
        )
        if self.dicom_out:
            try:
                with self.timer("dicom"):
                    record["dicom"] = _write_dicom(picture, res, path, self.out, stem, self.keep_identity)
            except Exception as err:  # the findings stand; only the DICOM copies failed
                record["dicom_error"] = error_message(err, name, str(path))
                logger.warning("DICOM output: %s", record["dicom_error"])
        return record

    @staticmethod
    def _overlay(image: np.ndarray, res: dict[str, Any]) -> np.ndarray:
        return overlay(
            image,
            res["nasal_bone_box"],
            res["fracture_probability"],
            res["fracture"],
            res["threshold"],
            res["heatmap"],
            res["region"],
            note=f"not assessable: {res['finding_reason']}" if "finding_reason" in res else "",
            finding=res["finding"],
            thresholds=res["thresholds"],
        )

    def wait(self) -> None:
        """Block until every file submitted to the background thread is written."""
        while self.pending:
            self.pending.popleft().result()


def outcome(item: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """An item's record and JSON name, waiting for its background writing if it has any."""
    if "written" in item:
        return item["written"].result()
    return item["record"], item["record_file"]


class InferenceSummary:
    """Evaluator handler: logs each image's outcome and appends its ``summary.csv`` row; the MLflow run on COMPLETED.

    ``summary.csv`` is started (header) when the evaluator starts and each row is appended as its file finishes, so
    a killed run keeps the rows of every file done.

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
        self.waiting: deque[dict[str, Any]] = deque()  # items whose row waits for their files
        self.start, self.begun = time.perf_counter(), False
        self.csv_path = self.out / "summary.csv"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def started(self, engine: Engine | None = None) -> None:
        """A new ``summary.csv`` (the header alone) and the clock."""
        self.rows, self.start, self.begun = [], time.perf_counter(), True
        self.waiting.clear()
        self._save_rows([], mode="w")

    def _save_rows(self, rows: list[dict[str, Any]], mode: str = "a") -> None:
        """Append ``rows`` to ``summary.csv`` (``mode="w"``: a new file with its header); closed, so flushed at once."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.csv_path, mode, newline="") as f:
                writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
                if mode == "w":
                    writer.writeheader()
                writer.writerows(rows)
        except OSError as err:  # the images' own JSON files are written; the batch goes on
            logger.warning("cannot write %s (%s: %s)", self.csv_path, type(err).__name__, err)

    def collect(self, engine: Engine) -> None:
        """Queue the iteration's items; append the rows of those written (in input order)."""
        self.waiting.extend(engine.state.output or [])
        self.flush(wait=False)

    def flush(self, wait: bool = True) -> None:
        """Append the rows of the queued items whose files are written (``wait``: of every queued item)."""
        while self.waiting and (wait or "written" not in self.waiting[0] or self.waiting[0]["written"].done()):
            self.add_row(self.waiting.popleft())

    def add_row(self, item: dict[str, Any]) -> None:
        """Log one item's outcome and append its row to ``summary.csv``."""
        rec, record_file = outcome(item)
        status = "error" if "error" in rec else "ok"
        row = {**{k: rec.get(k, "") for k in SUMMARY_COLUMNS}, "status": status, "output": record_file}
        self.rows.append(row)
        self._save_rows([row])
        prob = rec.get("fracture_probability")
        found = rec.get("finding_reason") if prob is None else f"p={prob:.3f} fracture={rec['fracture']}"
        line = rec.get("error") or f"{rec['image']}: {rec.get('finding')} ({found})"  # an error names its file
        logger.info("[%d/%s] %s", len(self.rows), self.total or "?", line)

    def write(self, engine: Engine | None = None) -> Path:
        """Finish ``summary.csv`` (just its header if no evaluator ran) and log the run to MLflow.

        The run's metrics: images, errors, DICOM-output errors, flagged (at the main threshold), images per finding
        (``finding_fracture``, ``finding_suspicious``, ``finding_no_fracture``, ``finding_not_assessable``),
        seconds per image; its artifact: ``summary.csv``.
        """
        from .tracking import Tracker, default_tracking_uri, run_name

        if not self.begun:  # an empty input folder: no evaluator ran
            self.started()
        self.flush(wait=True)
        summary = self.csv_path
        n = len(self.rows)
        errors = sum(r["status"] == "error" for r in self.rows)
        dicom_errors = sum(bool(r["dicom_error"]) for r in self.rows)
        seconds = (time.perf_counter() - self.start) / max(1, n)
        logger.info("%d images, %d errors, %.2f s per image; summary: %s", n, errors, seconds, summary)
        tracker = Tracker(self.tracking_uri or default_tracking_uri(self.out), self.experiment_name, self.out)
        run = tracker.start(run_name("inference"), tags={"job": "inference"})
        tracker.params(run, self.params)
        flagged = sum(str(r["fracture"]) == "True" for r in self.rows)
        counts = {"images": n, "errors": errors, "dicom_errors": dicom_errors, "flagged_fracture": flagged}
        counts |= {f"finding_{f.replace(' ', '_')}": sum(r["finding"] == f for r in self.rows) for f in FINDINGS}
        tracker.metrics(run, {**counts, "seconds_per_image": seconds})
        tracker.artifact(run, summary)
        tracker.end(run)
        return summary
