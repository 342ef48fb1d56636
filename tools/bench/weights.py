"""Weights for the end-to-end measurements: the trained ones in ``bundle/models`` when present, else untrained
networks of the quick profile's sizes in the bundle's formats (speed does not depend on training)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

TRAINED = ("detector.pt", "classifier.pt", "gdc2.pt")


def have_trained(models_dir: Path) -> bool:
    """Whether ``models_dir`` holds the three files inference reads."""
    return all((Path(models_dir) / name).is_file() for name in TRAINED)


def untrained_models(out: Path, imgsz: int = 256, crop_size: int = 128) -> Path:
    """Untrained detector (YOLOv8n), classifier C (convnet) and G-D-C step-2 generator, as ``make demo`` sizes them
    (quick profile), in ``out``; inference then needs the detector's confidence floor at 0 to find a box."""
    from scripts.classifier import FractureClassifier, save_classifier
    from scripts.detector import save_detector
    from scripts.networks import Generator, save_networks
    from scripts.yolo_export import prepare_ultralytics

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    prepare_ultralytics(None)
    from ultralytics.nn.tasks import DetectionModel

    with contextlib.redirect_stdout(io.StringIO()):
        yolo = DetectionModel(cfg="yolov8n.yaml", nc=1, verbose=False)
    yolo.names = {0: "nasal_bone"}
    torch.save({"model": yolo}, out / "yolo.pt")
    save_detector(out / "yolo.pt", out / "detector.pt", imgsz=imgsz, margin=0.3)
    net = FractureClassifier("convnet", "gray", mean=0.0, std=0.0625, highpass_sigma=3.0)
    save_classifier(out / "classifier.pt", net, 0.5, {"crop_size": crop_size, "box_source": "detector"})
    gen = Generator(features=(16, 16, 32, 64, 128, 16), upsample="nontrainable", residual=True)
    save_networks(out / "gdc2.pt", {"region": {"threshold": 0.5, "sigma": 2.0}}, generator=gen)
    return out
