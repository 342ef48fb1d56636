"""Stage 1 evaluation: ``DetectorEvaluator``, an Ignite engine that measures the detector on a split.

``validate#evaluator`` of ``configs/detector_evaluate.yaml``. ``run()`` is ``evaluate_detector``: mAP50
by Ultralytics' validator on the exported split, IoU with the landmark box, landmark containment,
failures; it writes ``evaluation.json``, ``evaluation_per_image_<split>.csv`` and ``predictions_<split>.png``.
It runs as one Ignite epoch of one iteration: handlers attached through ``val_handlers`` (e.g. the
``MLFlowHandler`` that ``monai.bundle run --tracking mlflow`` adds to ``validate#handlers``) find the
numeric results in ``state.metrics`` at ``EPOCH_COMPLETED``, named ``<split>_<key>`` (``test_mAP50``...).
``by_format`` breaks the per-image figures down by the file format of each image (``scripts.file_formats``).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Engine, Events

from .dataset import landmarks
from .detector import NasalBoneDetector, ultralytics_device
from .evaluation_report import write_by_format_csv
from .file_formats import file_format
from .geometry import box_iou, contains, crop_box
from .imageio import load_xray
from .splits import split_records
from .yolo_export import prepare_ultralytics, target_box

logger = logging.getLogger(__name__)


def ultralytics_map(
    model, data_yaml: str, split: str, imgsz: int, out_dir: str | Path, device=None, batch: int = 16
) -> dict:
    """mAP50 and mAP50-95 of an in-memory detection model on an exported split (Ultralytics' validator)."""
    prepare_ultralytics(Path(out_dir) / "ultralytics")
    import copy

    from ultralytics.models.yolo.detect import DetectionValidator

    args = {
        "data": data_yaml,
        "split": split,
        "imgsz": imgsz,
        "batch": batch,
        "conf": 0.001,
        "iou": 0.7,
        "plots": False,
        "save_json": False,
        "device": ultralytics_device(device),
        "verbose": False,
        "project": str(Path(out_dir).resolve()),
        "name": f"val_{split}",
        "exist_ok": True,
    }
    validator = DetectionValidator(args=args)
    stats = validator(model=copy.deepcopy(model))
    return {
        "mAP50": float(stats.get("metrics/mAP50(B)", float("nan"))),
        "mAP50_95": float(stats.get("metrics/mAP50-95(B)", float("nan"))),
    }


def detector_by_format(per_image: Sequence[dict]) -> dict[str, dict]:
    """Per file format, in name order: ``n_images``, ``hit_rate`` (share of images whose box contains both
    landmarks), ``mean_iou`` and ``failures`` (images without a box), from rows with ``format``, ``contains_both``,
    ``iou`` and ``x1`` (empty without a box): ``evaluate_detector``'s per-image rows."""
    out = {}
    for name in sorted({row["format"] for row in per_image}):
        rows = [row for row in per_image if row["format"] == name]
        out[name] = {
            "n_images": len(rows),
            "hit_rate": float(np.mean([float(row["contains_both"]) for row in rows])),
            "mean_iou": float(np.mean([float(row["iou"]) for row in rows])),
            "failures": sum(str(row["x1"]) == "" for row in rows),
        }
    return out


def _draw_tile(image01: np.ndarray, pred, gt, points, tile: int, text: str) -> np.ndarray:
    """One ``tile x tile`` RGB tile: the image, its boxes, landmark crosses and ``text``."""
    from PIL import Image, ImageDraw

    h, w = image01.shape
    f = tile / max(h, w)
    img = (
        Image.fromarray(np.round(np.clip(image01, 0, 1) * 255).astype(np.uint8))
        .resize((round(w * f), round(h * f)), Image.BILINEAR)
        .convert("RGB")
    )
    canvas = Image.new("RGB", (tile, tile))
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)

    def scaled(b):
        return [(float(b[0]) + 0.5) * f, (float(b[1]) + 0.5) * f, (float(b[2]) + 0.5) * f, (float(b[3]) + 0.5) * f]

    draw.rectangle(scaled(gt), outline=(40, 220, 40), width=2)
    if pred is not None:
        draw.rectangle(scaled(pred), outline=(255, 60, 60), width=2)
    for (x, y), color in zip(points, ((0, 255, 255), (255, 255, 0)), strict=True):
        cx, cy = (x + 0.5) * f, (y + 0.5) * f
        draw.line([cx - 4, cy, cx + 4, cy], fill=color)
        draw.line([cx, cy - 4, cx, cy + 4], fill=color)
    draw.text((4, 4), text, fill=(255, 255, 255))
    return np.asarray(canvas)


def save_prediction_grid(
    items: list[dict], path: str | Path, cols: int = 4, tile: int = 320, zoom: bool = True
) -> Path:
    """A grid of tiles: predicted box (red), landmark box (green), nasion (cyan) and tip (yellow).

    With ``zoom`` each tile shows the region around the landmark box (3x its size) so that the boxes are readable.
    """
    from PIL import Image

    tiles = []
    for it in items[: cols * cols]:
        img, pred, gt, pts = it["image"], it["pred"], it["gt"], it["points"]
        if zoom:
            cx, cy, half = (gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2, 1.5 * max(gt[2] - gt[0], gt[3] - gt[1])
            view = np.array([cx - half, cy - half, cx + half, cy + half])
            size = 256
            img = crop_box(img, view, size)
            f = size / (view[2] - view[0])

            def move(b, origin=np.r_[view[:2], view[:2]], f=f):
                return None if b is None else (np.asarray(b, float) - origin[: np.shape(b)[-1]]) * f - 0.5 * (1 - f)

            pred, gt, pts = move(pred), move(gt), move(pts)
        tiles.append(_draw_tile(img, pred, gt, pts, tile, it["text"]))
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[r : r + cols], axis=1) for r in range(0, len(tiles), cols)], axis=0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return Path(path)


def evaluate_detector(
    dataset_dir: str,
    split_file: str,
    data_yaml: str,
    weights: str,
    out_dir: str,
    margin: float,
    split: str = "test",
    conf: float = 0.05,
    device=None,
    batch: int = 16,
    n_show: int = 16,
    fractions=(0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict:
    """Measure the detector on ``split``: mAP50 (Ultralytics val), IoU with the landmark box, landmark containment.

    Writes ``evaluation.json`` (with ``by_format``: the figures per file format), ``evaluation_per_image_<split>.csv``,
    ``evaluation_by_format.csv`` and ``predictions_<split>.png`` under ``out_dir``. An image without a box counts as a
    failure, with IoU 0 and landmarks not contained.
    """
    out = Path(out_dir)
    prepare_ultralytics(out / "ultralytics")
    records = split_records(dataset_dir, split_file, split, fractions, seed)
    det = NasalBoneDetector(weights, conf=conf, device=device)
    det.predict(np.random.default_rng(0).random((64, 64), dtype=np.float32))  # warm-up, not timed
    if abs(det.margin - margin) > 1e-9:
        logger.warning("detector trained with margin %s, evaluated against margin %s", det.margin, margin)
    ious, inside, confs, shown, seconds = [], [], [], [], 0.0
    per_image = []
    for r in records:
        img = load_xray(r["image"])
        t0 = time.perf_counter()
        box, c = det.predict(img)
        seconds += time.perf_counter() - t0
        gt, pts = target_box(r, img.shape, margin), landmarks(r)
        iou = 0.0 if box is None else box_iou(box, gt)
        ok = box is not None and contains(box, pts)
        ious.append(iou)
        inside.append(ok)
        confs.append(c)
        per_image.append(
            {
                "image": r["id"],
                "format": file_format(r["image"]),
                "iou": round(iou, 4),
                "contains_both": int(ok),
                "confidence": round(c, 4),
                **dict(zip(("x1", "y1", "x2", "y2"), [""] * 4 if box is None else np.round(box, 2), strict=True)),
            }
        )
        if len(shown) < n_show:
            shown.append(
                {
                    "image": img,
                    "pred": box,
                    "gt": gt,
                    "points": pts,
                    "text": f"IoU {iou:.2f} conf {c:.2f}" + ("" if ok else " MISS"),
                }
            )
    out.mkdir(parents=True, exist_ok=True)
    maps = ultralytics_map(det.model, data_yaml, split, det.imgsz, out, device, batch)
    ious_a = np.asarray(ious)
    result = {
        "split": split,
        "images": len(records),
        **maps,
        "mean_iou": float(ious_a.mean()),
        "median_iou": float(np.median(ious_a)),
        "iou_at_least_0.5": float((ious_a >= 0.5).mean()),
        "iou_at_least_0.75": float((ious_a >= 0.75).mean()),
        "contains_both_landmarks": float(np.mean(inside)),
        "failures": int(sum(c == 0.0 for c in confs)),
        "conf_threshold": conf,
        "mean_confidence": float(np.mean(confs)),
        "ms_per_image": 1000.0 * seconds / max(len(records), 1),
        "imgsz": det.imgsz,
        "margin": margin,
        "weights": Path(weights).name,  # the file name only: no path of this machine in results
        "by_format": detector_by_format(per_image),
    }
    (out / "evaluation.json").write_text(json.dumps(result, indent=2))
    with open(out / f"evaluation_per_image_{split}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(per_image[0]) if per_image else ["image"])
        writer.writeheader()
        writer.writerows(per_image)
    write_by_format_csv(result["by_format"], out / "evaluation_by_format.csv")
    save_prediction_grid(shown, out / f"predictions_{split}.png")
    logger.info(
        "detector on %s: %s",
        split,
        {k: result[k] for k in ("mAP50", "mean_iou", "contains_both_landmarks", "failures")},
    )
    return result


class DetectorEvaluator(Engine):
    """``evaluate_detector(**kwargs)`` as an Ignite engine; ``run()`` returns the result dict (``state.result``)."""

    def __init__(self, val_handlers: Sequence | None = None, **kwargs):
        super().__init__(self._no_step)
        self.kwargs = kwargs
        self.val_handlers = list(val_handlers or [])
        for handler in self.val_handlers:
            handler.attach(self)

    @staticmethod
    def _no_step(engine: Engine, batch: Any) -> None:
        raise RuntimeError("DetectorEvaluator evaluates the whole split at once; call run() without data")

    def run(self) -> dict:  # type: ignore[override]
        """Evaluate, then fire one iteration and epoch with the numeric results in ``state.metrics``."""
        self.state.max_epochs, self.state.epoch_length = 1, 1
        self.state.epoch, self.state.iteration, self.state.metrics, self.state.output = 0, 0, {}, None
        try:
            self.fire_event(Events.STARTED)
            self.fire_event(Events.EPOCH_STARTED)
            result = evaluate_detector(**self.kwargs)
        except Exception as e:
            self._fire_event(Events.EXCEPTION_RAISED, e)  # as Ignite does: e.g. StatsHandler logs it
            raise
        split = result["split"]
        numbers = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.state.metrics = {f"{split}_{k}": float(v) for k, v in numbers.items() if k != "images"}
        self.state.epoch, self.state.iteration, self.state.output = 1, 1, [result]  # decollated, as MONAI
        self.state.result = result
        self.fire_event(Events.ITERATION_COMPLETED)
        self.fire_event(Events.EPOCH_COMPLETED)
        self.fire_event(Events.COMPLETED)
        return result


__all__ = ["DetectorEvaluator", "detector_by_format", "evaluate_detector", "save_prediction_grid", "ultralytics_map"]
