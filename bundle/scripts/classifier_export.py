"""Stage 2's ends: export C with its operating threshold (validation split), and evaluate it on the test split.

- ``export_classifier``: the best weights of training (Ignite ``CheckpointSaver`` file), the threshold chosen on the
  validation split (``evaluation.choose_threshold``), written with ``save_classifier`` as ``classifier.pt``.
- ``evaluate_classifier``: C's outputs on the evaluated split at its stored threshold, through
  ``evaluation.evaluate_binary`` (patient-level bootstrap, calibration, figures).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from .checkpoint import state_dict_from
from .classifier import save_classifier
from .evaluation import choose_threshold
from .evaluation_report import evaluate_binary
from .imageio import INTENSITY_CONVENTION

logger = logging.getLogger(__name__)


@torch.no_grad()
def predict_loader(model: nn.Module, loader, device: str | torch.device) -> dict[str, list]:
    """Fracture probabilities of every batch of ``loader`` (dicts with ``image``, ``label``, ``patient_id``)."""
    was_training = model.training
    model.eval()
    out: dict[str, list] = {"prob": [], "label": [], "patient_id": []}
    for batch in loader:
        prob = torch.sigmoid(model(batch["image"].to(device))).flatten().cpu()
        out["prob"] += prob.tolist()
        out["label"] += [int(v) for v in torch.as_tensor(batch["label"]).flatten().tolist()]
        out["patient_id"] += list(batch["patient_id"])
    model.train(was_training)
    return out


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
) -> Path:
    """Load the best weights (if saved), choose the threshold on the validation split, write ``classifier.pt``."""
    if Path(best_path).is_file():
        network.load_state_dict(state_dict_from(best_path))
    else:
        logger.warning("%s not found: exporting the last weights", best_path)
    val = predict_loader(network, val_loader, device)
    threshold, figures = choose_threshold(val["label"], val["prob"], rule, target_sensitivity)
    crops = crops_info(crops_csv)
    info = {
        "crop_size": int(crops.get("size", 0)) or None,
        "box_source": crops.get("box_source", "unknown"),
        "box_margin": crops.get("margin"),
        "threshold_rule": rule,
        "target_sensitivity": target_sensitivity,
        "validation": {k: v for k, v in figures.items() if k not in ("rule", "target_sensitivity")},
        "n_validation_images": len(val["label"]),
        "intensity": INTENSITY_CONVENTION,  # how its images were loaded; inference warns if it loads otherwise
        **(extra or {}),
    }

    path = save_classifier(out_path, network, threshold, info)
    logger.info(
        "classifier: threshold %.4f (%s on %d validation crops: sensitivity %.3f, specificity %.3f) -> %s",
        threshold,
        rule,
        len(val["label"]),
        figures["sensitivity"],
        figures["specificity"],
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
    """Write ``evaluation.json`` (+ ROC and calibration PNGs) for C's outputs on ``split`` at its stored threshold.

    ``collected`` holds per-crop ``pred`` (probability), ``label`` and ``patient_id`` (``OutputCollector``).
    Raises if C was trained on another crop size than the crops evaluated.
    """
    crops = crops_info(crops_csv)
    if info.get("crop_size") and crops.get("size") and int(info["crop_size"]) != int(crops["size"]):
        raise ValueError(
            f"classifier was trained on {info['crop_size']} px crops but {crops_csv} holds "
            f"{crops['size']} px crops: set crop_size to {info['crop_size']}"
        )
    prob = [float(p[0] if isinstance(p, list) else p) for p in collected["pred"]]
    label = [int(round(float(y[0] if isinstance(y, list) else y))) for y in collected["label"]]
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
        title="Classifier C, test split",
    )
