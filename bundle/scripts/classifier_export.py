"""Stage 2's ends: export C with its calibration and operating points (validation split), evaluate it on test.

- ``export_classifier``: the best weights of training (Ignite ``CheckpointSaver`` file); on the validation split the
  calibration step (``evaluation.fit_temperature``: temperature scaling), then, on the calibrated probabilities, the
  main threshold (``evaluation.choose_threshold``) and the ``suspicious`` and ``fracture`` operating points
  (``evaluation.operating_points``); written with ``save_classifier`` as ``classifier.pt``.
- ``evaluate_classifier``: C's calibrated outputs on the evaluated split at its stored thresholds, through
  ``evaluation_report.evaluate_binary`` (patient-level bootstrap, calibration before and after, figures).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import state_dict_from
from .classifier import save_classifier
from .distributed import unwrap, whole_dataset_loader
from .evaluation import (
    binary_metrics,
    choose_threshold,
    confusion,
    finding_counts,
    fit_temperature,
    operating_points,
    sigmoid,
    stored_calibration,
    temperature_figures,
)
from .evaluation_report import evaluate_binary
from .imageio import INTENSITY_CONVENTION

logger = logging.getLogger(__name__)


@torch.no_grad()
def predict_loader(model: nn.Module, loader, device: str | torch.device) -> dict[str, list]:
    """Fracture logits and (uncalibrated) probabilities of every batch of ``loader`` (dicts with ``image``,
    ``label``, ``patient_id``)."""
    was_training = model.training
    model.eval()
    out: dict[str, list] = {"logit": [], "prob": [], "label": [], "patient_id": [], "crop_mean": [], "crop_std": []}
    for batch in loader:
        images = batch["image"].float()
        out["crop_mean"] += images.flatten(1).mean(1).tolist()
        out["crop_std"] += images.flatten(1).std(1).tolist()
        logit = model(batch["image"].to(device)).float().flatten().cpu()
        out["logit"] += logit.tolist()
        out["prob"] += torch.sigmoid(logit).tolist()
        out["label"] += [int(v) for v in torch.as_tensor(batch["label"]).flatten().tolist()]
        out["patient_id"] += list(batch["patient_id"])
    model.train(was_training)
    return out


def within_operating_points(
    y: list[int], prob: list[float], threshold: float, figures: dict, points: dict
) -> tuple[float, dict]:
    """The main threshold moved into ``[suspicious, fracture]`` when its rule put it outside, with its validation
    figures at the new place, so that ``fracture`` (at the main threshold) never contradicts ``finding``: every
    image called a fracture is at least suspicious, and every ``fracture`` finding is called a fracture."""
    low, high = points["suspicious"]["threshold"], points["fracture"]["threshold"]
    if low <= threshold <= high:
        return threshold, figures
    moved = min(max(threshold, low), high)
    logger.info(
        "main threshold %.4f outside the operating points [%.4f, %.4f]: moved to %.4f", threshold, low, high, moved
    )
    figures = {**figures, "threshold": moved, "moved_from": threshold, **binary_metrics(y, prob, moved)}
    return moved, {**figures, **confusion(y, prob, moved)}


def crop_intensity_range(means: list[float], stds: list[float]) -> dict[str, list[float]]:
    """The 0.5th-99.5th percentile range of the validation crops' intensity mean and standard deviation: inference
    flags a crop outside it (``scripts.inference_engine.intensity_warning``)."""
    if not means:
        return {}
    return {
        "mean": [float(v) for v in np.percentile(means, [0.5, 99.5])],
        "std": [float(v) for v in np.percentile(stds, [0.5, 99.5])],
    }


def crops_info(crops_csv: str | Path) -> dict:
    """What ``crops.json`` beside ``crops_csv`` records: box source actually used, crop size, margin..."""
    path = Path(crops_csv).parent / "crops.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def export_classifier(
    network: nn.Module,
    best_path: str | Path,
    val_loader,
    out_path: str | Path,
    crops_csv: str | Path,
    device: str | torch.device,
    rule: str = "youden",
    target_sensitivity: float | None = None,
    extra: dict | None = None,
    calibration: str = "temperature",
    suspicious_sensitivity: float = 0.95,
    fracture_specificity: float = 0.95,
) -> Path:
    """Load the best weights (if saved); on the validation split fit the calibration (``"temperature"``, or
    ``"none"``: T = 1), then choose the main threshold and the two operating points on the calibrated
    probabilities; write ``classifier.pt``. Under DDP (rank 0) the network's module runs on every validation crop,
    as in one process."""
    network, val_loader = unwrap(network), whole_dataset_loader(val_loader)
    if Path(best_path).is_file():
        network.load_state_dict(state_dict_from(best_path))
    else:
        logger.warning("%s not found: exporting the last weights", best_path)
    val = predict_loader(network, val_loader, device)
    if calibration == "temperature":
        fitted = fit_temperature(val["label"], val["logit"])
    elif calibration == "none":
        fitted = temperature_figures(val["label"], val["logit"], 1.0)
    else:
        raise ValueError(f"calibration must be 'temperature' or 'none', got '{calibration}'")
    prob = sigmoid(val["logit"], fitted["temperature"]).tolist()  # every threshold below is on this scale
    threshold, figures = choose_threshold(val["label"], prob, rule, target_sensitivity)
    points = operating_points(val["label"], prob, suspicious_sensitivity, fracture_specificity)
    threshold, figures = within_operating_points(val["label"], prob, threshold, figures, points)
    crops = crops_info(crops_csv)
    info = {
        "crop_intensity": crop_intensity_range(val["crop_mean"], val["crop_std"]),
        "crop_size": int(crops.get("size", 0)) or None,
        "box_source": crops.get("box_source", "unknown"),
        "box_margin": crops.get("margin"),
        "threshold_rule": rule,
        "target_sensitivity": target_sensitivity,
        "validation": {k: v for k, v in figures.items() if k not in ("rule", "target_sensitivity")},
        "calibration": {
            "method": calibration,
            "fitted_on": "validation",
            "thresholds_on": "calibrated probability sigmoid(logit / temperature)",
            **fitted,
        },
        "operating_points": points,
        "n_validation_images": len(val["label"]),
        "intensity": INTENSITY_CONVENTION,  # how its images were loaded; inference warns if it loads otherwise
        **(extra or {}),
    }

    path = save_classifier(out_path, network, threshold, info)
    logger.info(
        "classifier: temperature %.3f (validation ECE %.3f -> %.3f); threshold %.4f (%s on %d validation crops: "
        "sensitivity %.3f, specificity %.3f); suspicious %.4f, fracture %.4f -> %s",
        fitted["temperature"],
        fitted["ece_before"],
        fitted["ece_after"],
        threshold,
        rule,
        len(val["label"]),
        figures["sensitivity"],
        figures["specificity"],
        points["suspicious"]["threshold"],
        points["fracture"]["threshold"],
        path,
    )
    return path


def evaluate_classifier(
    collected: dict[str, list],
    info: dict,
    crops_csv: str | Path,
    out_dir: str | Path,
    split: str = "test",
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Write ``evaluation.json`` (+ ROC and calibration PNGs) for C's outputs on ``split`` at its stored thresholds.

    ``collected`` holds per-crop ``logit``, ``label`` and ``patient_id`` (``OutputCollector``). The figures are those
    of the calibrated probability ``sigmoid(logit / temperature)`` at the main threshold, plus each operating
    point's sensitivity and specificity, the findings' counts and the calibration before and after.
    Raises if C was trained on another crop size than the crops evaluated.
    """
    crops = crops_info(crops_csv)
    if info.get("crop_size") and crops.get("size") and int(info["crop_size"]) != int(crops["size"]):
        raise ValueError(
            f"classifier was trained on {info['crop_size']} px crops but {crops_csv} holds "
            f"{crops['size']} px crops: set crop_size to {info['crop_size']}"
        )
    logit = [float(z[0] if isinstance(z, list) else z) for z in collected["logit"]]
    label = [int(round(float(y[0] if isinstance(y, list) else y))) for y in collected["label"]]
    stored = stored_calibration(info)
    if not stored["calibrated"]:
        logger.warning("classifier.pt has no calibration step (older weights): temperature 1, both points = threshold")
    raw, prob = sigmoid(logit).tolist(), sigmoid(logit, stored["temperature"]).tolist()
    extra = {
        "stage": "classifier",
        "split": split,
        "box_source": crops.get("box_source", "unknown"),
        "detector_misses": crops.get("detector_misses"),
        "crop_size": crops.get("size"),
        "trained_on_box_source": info.get("box_source"),
        "threshold_rule": info.get("threshold_rule"),
        "threshold_chosen_on": "validation",
        "validation_at_threshold": info.get("validation"),
        "temperature": stored["temperature"],
        "calibration_method": info.get("calibration", {}).get("method", "none (older weights)"),
        "probability": "calibrated: sigmoid(logit / temperature)",
        "thresholds": stored["thresholds"],
        "findings": finding_counts(label, prob, stored["thresholds"]),
        "validation_operating_points": info.get("operating_points"),
        "model": info.get("config"),
    }
    return evaluate_binary(
        label,
        prob,
        collected["patient_id"],
        info["threshold"],
        out_dir,
        "evaluation",
        n_resamples=n_resamples,
        seed=seed,
        extra=extra,
        title=f"Classifier C, {split} split",
        score_before=raw,
        operating_points=stored["thresholds"],
    )
