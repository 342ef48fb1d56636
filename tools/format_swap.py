"""The same test X-rays in every file format: does the format change the answer?

The per-format table of an evaluation (``tools.format_table``) compares *different* images stored in different
formats, about ten per format on the demo's test split, so one error moves a format's accuracy by 0.1. This tool
holds the images fixed instead: every test image is loaded, written in each of ``scripts.imageio.KINDS`` (8-bit PNG,
16-bit PNG, 12-bit values in a 16-bit PNG, JPEG, DICOM MONOCHROME2/1 and RLE, float NIfTI), loaded again and run
through the trained detector and classifier as inference runs them. It prints, per format, accuracy, sensitivity
and specificity at the main threshold, and the largest change of probability and box against the 16-bit PNG, and
writes ``<run_dir>/format_swap.json``::

    python -m tools.format_swap runs/demo --dataset_dir data/phantom
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from scripts import BUNDLE_ROOT
from scripts.classifier import load_classifier
from scripts.dataset import read_dataset
from scripts.detector import NasalBoneDetector
from scripts.evaluation import sigmoid
from scripts.geometry import crop_box, squarify
from scripts.imageio import KINDS, load_xray, save_xray
from scripts.inference import classifier_info
from scripts.splits import read_split

REFERENCE = "png16"


def answer(img: np.ndarray, detector: NasalBoneDetector, net: torch.nn.Module, info: dict) -> tuple[list, float]:
    """The detector's box (None if none, or below its confidence floor) and the calibrated probability."""
    box, conf = detector.predict(img)
    if box is None or conf < detector.confidence_floor:
        return None, float("nan")
    crop = crop_box(img, squarify(box), int(info["crop_size"]))
    with torch.no_grad():
        logit = float(net(torch.from_numpy(crop)[None, None].float()).flatten()[0])
    return [float(v) for v in box], float(sigmoid(logit, info["temperature"]))


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def swap(run_dir: Path, dataset_dir: Path, models_dir: Path, split: str = "test") -> dict:
    """Per format: n, assessable, accuracy/sensitivity/specificity at the threshold, largest changes vs PNG16."""
    images = {k for k, v in read_split(run_dir / "split.csv").items() if v == split}
    records = [r for r in read_dataset(dataset_dir) if r["id"] in images]  # id: the image's path in dataset.csv
    detector = NasalBoneDetector(models_dir / "detector.pt")
    net, _ = load_classifier(models_dir / "classifier.pt")
    info = classifier_info(models_dir / "classifier.pt")
    answers: dict[str, list] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        for i, rec in enumerate(records):
            img = load_xray(rec["image"])
            for kind in KINDS:
                answers[kind].append(answer(load_xray(save_xray(Path(tmp) / f"x{i}", img, kind)), detector, net, info))
    labels = np.array([int(r["label"]) for r in records])
    ref = answers[REFERENCE]
    table = {}
    for kind, found in answers.items():
        prob = np.array([p for _, p in found])
        ok = ~np.isnan(prob)
        pred = prob >= info["threshold"]
        boxes = [
            float(np.abs(np.subtract(b, rb)).max()) for (b, _), (rb, _) in zip(found, ref, strict=True) if b and rb
        ]
        changes = np.abs(prob - np.array([p for _, p in ref]))
        table[kind] = {
            "n": int(len(found)),
            "assessable": int(ok.sum()),
            "accuracy": _mean(pred[ok] == labels[ok]),
            "sensitivity": _mean(pred[ok & (labels == 1)]),
            "specificity": _mean(~pred[ok & (labels == 0)]),
            "max_probability_change": float(np.nanmax(changes)) if (~np.isnan(changes)).any() else None,
            "max_box_change_px": max(boxes) if boxes else None,
        }
    return {"split": split, "images": len(records), "threshold": info["threshold"], "formats": table}


def markdown(result: dict) -> str:
    lines = [
        f"The {result['images']} {result['split']} images, each written in every format (threshold "
        f"{result['threshold']:.3f}; changes against the 16-bit PNG):",
        "",
        "| format | assessable | accuracy | sensitivity | specificity | largest probability change "
        "| largest box change (px) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, t in result["formats"].items():
        lines.append(
            f"| {kind} | {t['assessable']}/{t['n']} | {_cell(t['accuracy'])} | {_cell(t['sensitivity'])} | "
            f"{_cell(t['specificity'])} | {_cell(t['max_probability_change'], 4)} | "
            f"{_cell(t['max_box_change_px'], 2)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a training run's output folder (its split.csv), e.g. runs/demo")
    parser.add_argument("--dataset_dir", type=Path, default=Path("data/phantom"))
    parser.add_argument("--models_dir", type=Path, default=BUNDLE_ROOT / "models")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    result = swap(args.run_dir, args.dataset_dir, args.models_dir, args.split)
    (args.run_dir / "format_swap.json").write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
