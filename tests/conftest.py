"""Shared fixtures: tiny phantom datasets built once per session, offline switches for every test."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# ONNX Runtime exports (scripts.onnx_runtime) cached in a folder of this test session only, for its subprocesses too:
# every session exercises the export path a fresh machine takes, and never touches the user's ~/.cache
_CACHE = tempfile.mkdtemp(prefix="nasal_test_cache_")
os.environ["XDG_CACHE_HOME"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A 48-image phantom dataset (24 patients, about half fractured; both labels in every split) at 256 px."""
    from tools.phantom import write_dataset

    out = tmp_path_factory.mktemp("phantom")
    write_dataset(out, n_images=48, fracture_rate=0.5, seed=3, size=256)
    return out


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Path:
    """Untrained tiny weights in the bundle's formats: detector (YOLOv8n), classifier C (convnet), G-D-C step 2."""
    from ultralytics.nn.tasks import DetectionModel

    from scripts.classifier import FractureClassifier, save_classifier
    from scripts.detector import save_detector
    from scripts.networks import Generator, save_networks
    from scripts.yolo_export import prepare_ultralytics

    out = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    prepare_ultralytics(None)
    yolo = DetectionModel(cfg="yolov8n.yaml", nc=1, verbose=False)
    yolo.names = {0: "nasal_bone"}
    torch.save({"model": yolo}, out / "yolo.pt")
    save_detector(out / "yolo.pt", out / "detector.pt", imgsz=64, margin=0.3)
    net = FractureClassifier("convnet", "gray", mean=0.0, std=0.0625, highpass_sigma=3.0)
    save_classifier(out / "classifier.pt", net, 0.4, {"crop_size": 64, "box_source": "detector"})
    gen = Generator(features=(4, 4, 8, 8, 8, 4), residual=True)
    save_networks(out / "gdc2.pt", {"region": {"threshold": 0.3, "sigma": 2.0}}, generator=gen)
    return out


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> Path:
    """Two good PNG X-rays (non-square), a corrupt PNG and a text file (skipped)."""
    folder = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(96, 80), (80, 112)]):
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(folder / f"xray{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def pacs_engine(models, tmp_path_factory):
    """The bundle's warm inference on the tiny weights (detector floor 0) as the DICOM node builds it: DICOM outputs
    in the identity mode for PACS use."""
    from clinic.engine import WarmInference

    overrides = {"preprocessing#transforms#4#conf": 0.0}  # tests.test_inference.DETECT: an untrained detector finds
    out = tmp_path_factory.mktemp("engine")
    return WarmInference(out, models, "cpu", dicom_out=True, keep_patient_identity=True, overrides=overrides)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A real Orthanc on loopback ports (tests/orthanc.py), stopped after the module."""
    from tests.orthanc import Orthanc

    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()
