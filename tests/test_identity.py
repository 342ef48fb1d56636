"""Patient identity: DICOMs with known fake identity values through the chained training (tiny profile) and inference;
no value may appear in any file written or in the logs unless the identity flag is set. Also: no Ultralytics Platform
key or upload callback survives ``prepare_ultralytics``, and GAN sample grids reach MLflow only with ``log_images``.

The search is over the raw bytes of every file (case-insensitive), the MLflow sqlite database included; it does not
decompress (PNG pixel data is zlib-compressed, and the phantom's pixels hold no text).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from ignite.engine import Engine
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

from scripts import BUNDLE_ROOT

# distinctive fake identity values (none can occur by chance in the bundle's own files)
UID_ROOT = "1.2.826.0.1.3680043.8.498.7731."  # the source images' Study, Series and SOP Instance UIDs
IDENTITY = {
    "PatientName": "ZZTESTNAME^PAT",
    "PatientID": "PID-7731-ZZ",
    "PatientBirthDate": "19010203",
    "AccessionNumber": "ACC-99X1",
    "ReferringPhysicianName": "ZZREFDOC^HOUSE",
    "InstitutionName": "ZZ INSTITUTE 4417",
    "StudyID": "SID-8842Z",
    "StudyDescription": "ZZ STUDY DESC 3391",
    "StudyDate": "19870605",
}
OTHER_PATIENT_ID = "OPID-5521-ZZ"
NEEDLES = [*IDENTITY.values(), "ZZTESTNAME", "ZZREFDOC", OTHER_PATIENT_ID, UID_ROOT]
# with the flag the outputs carry the source's patient and study modules (not its equipment: InstitutionName)
KEPT = [k for k in IDENTITY if k != "InstitutionName"]


def _source_dicom(image01: np.ndarray, index: int) -> Dataset:
    """A DX image (16-bit, 12 stored) carrying the fake identity."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (f"{UID_ROOT}{index}.{k}" for k in (1, 2, 3))
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in IDENTITY.items():
        setattr(ds, keyword, value)
    other = Dataset()
    other.PatientID = OTHER_PATIENT_ID
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]
    ds.PatientSex = "O"
    ds.StudyTime = "101010"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = image01.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.round(np.clip(image01, 0, 1) * 4095).astype(np.uint16).tobytes()
    return ds


def _dicom_dataset(phantom: Path, out: Path) -> Path:
    """The phantom dataset with every image as a DICOM file carrying the fake identity (same labels and masks)."""
    from scripts.imageio import load_xray

    (out / "images").mkdir(parents=True)
    shutil.copytree(phantom / "masks", out / "masks")
    with open(phantom / "dataset.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        name = f"images/{Path(row['image']).name.split('.')[0]}.dcm"
        _source_dicom(load_xray(phantom / row["image"]), i).save_as(out / name, enforce_file_format=True)
        row["image"] = name
    with open(out / "dataset.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def _found(data: bytes) -> set[str]:
    low = data.lower()
    return {n for n in NEEDLES if n.lower().encode() in low}


def _files(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file())


def _leaks(files: list[Path]) -> dict[str, set[str]]:
    """``{file: needles found}`` over ``files``."""
    return {str(p): found for p in files if (found := _found(p.read_bytes()))}


def test_identity_stays_out_of_training_and_inference_outputs(tiny_dataset, models, tmp_path, capfd, caplog) -> None:
    from monai.bundle import ConfigParser

    from scripts.inference import run_inference
    from scripts.pipeline import train_all

    caplog.set_level("DEBUG")
    data = _dicom_dataset(tiny_dataset, tmp_path / "data")
    assert _found((data / "images" / "P0000_0.dcm").read_bytes()) == set(NEEDLES)  # the search sees them

    start = time.perf_counter()
    config = ConfigParser.load_config_files(BUNDLE_ROOT / "configs" / "train.yaml")
    run, weights = tmp_path / "run", tmp_path / "models"
    summary = train_all(
        config["stages"],
        profile="tiny",
        dataset_dir=str(data),
        output_dir=str(run),
        models_dir=str(weights),
        only=["detector", "classifier"],
    )
    assert summary["status"] == "FINISHED" and set(summary["stages"]) == {"detector", "classifier"}
    assert (run / "mlflow.db").is_file() and (run / "mlruns").is_dir()
    train_seconds = time.perf_counter() - start
    shutil.copy(models / "gdc2.pt", weights / "gdc2.pt")  # the localiser (not trained here)

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("P0000_0.dcm", "P0001_0.dcm", "P0002_1.dcm"):
        shutil.copy(data / "images" / name, inputs / name)
    anon, keep = tmp_path / "out_anon", tmp_path / "out_keep"
    run_inference(inputs, anon, weights, device="cpu", dicom_out=True)
    run_inference(inputs, keep, weights, device="cpu", dicom_out=True, keep_patient_identity=True)

    logs = capfd.readouterr()
    log_text = logs.out + logs.err + caplog.text
    assert "[1/3]" in log_text and "classifier" in log_text  # the logs were captured
    assert not _found(log_text.encode()), [line for line in log_text.splitlines() if _found(line.encode())][:5]
    files = _files(run, weights, anon)
    names = {p.name for p in files}
    assert {"mlflow.db", "pipeline.json", "split.csv", "detector.pt", "classifier.pt", "summary.csv"} <= names
    assert {"P0000_0.json", "P0000_0_overlay.png", "P0000_0_sc.dcm", "P0000_0_sr.dcm"} <= names
    assert sum("mlruns" in p.parts for p in files) >= 5  # the artifact stores of training and inference
    assert _leaks(files) == {}, "identity in training or de-identified inference outputs"

    dicom_outputs = sorted(keep.glob("*_s[cr].dcm"))
    assert len(dicom_outputs) == 6
    assert set(_leaks(_files(keep))) == {str(p) for p in dicom_outputs}  # only the DICOM outputs carry identity
    for name in ("P0000_0", "P0001_0", "P0002_1"):
        source = pydicom.dcmread(inputs / f"{name}.dcm", stop_before_pixels=True)
        assert json.loads((anon / f"{name}.json").read_text())["dicom"]
        for kind in ("sc", "sr"):
            kept = pydicom.dcmread(keep / f"{name}_{kind}.dcm")
            assert kept.StudyInstanceUID == source.StudyInstanceUID
            assert all(kept[k].value == source[k].value for k in KEPT)
            assert kept.OtherPatientIDsSequence[0].PatientID == OTHER_PATIENT_ID
            anonymous = pydicom.dcmread(anon / f"{name}_{kind}.dcm")
            assert anonymous.PatientID == "ANON" and anonymous.PatientIdentityRemoved == "YES"
            assert anonymous.StudyInstanceUID != source.StudyInstanceUID
    total = time.perf_counter() - start
    print(f"identity test: {len(files)} files searched; training {train_seconds:.0f} s, all {total:.0f} s")


def test_prepare_ultralytics_removes_the_platform_key_and_callbacks(tmp_path) -> None:
    """In a fresh process (Ultralytics not imported) with a key in the environment and in the settings file."""
    from scripts.yolo_export import prepare_ultralytics

    prepare_ultralytics(None)
    from ultralytics.utils import SETTINGS

    key = "ul_" + "ab" * 20
    config_dir = tmp_path / "yolo"
    (config_dir / "Ultralytics").mkdir(parents=True)
    settings = {**SETTINGS.defaults, "api_key": key}  # a valid settings file, so Ultralytics keeps the key
    (config_dir / "Ultralytics" / "settings.json").write_text(json.dumps(settings))
    code = f"""
import json, logging, os
from collections import defaultdict
logging.basicConfig(level=logging.WARNING)
from scripts.yolo_export import prepare_ultralytics
folder = prepare_ultralytics({str(config_dir)!r})
from ultralytics.utils import SETTINGS
from ultralytics.utils.callbacks import platform
from ultralytics.utils.callbacks.base import add_integration_callbacks

class DetectionTrainer:  # what add_integration_callbacks looks at: the class name and a callbacks dict
    callbacks = defaultdict(list)

trainer = DetectionTrainer()
add_integration_callbacks(trainer)
modules = {{f.__module__ for fs in trainer.callbacks.values() for f in fs}}
print(json.dumps({{"env": os.environ.get("ULTRALYTICS_API_KEY"), "settings": SETTINGS.get("api_key"),
                  "file": json.loads((folder / "settings.json").read_text()).get("api_key"),
                  "platform": len(platform.callbacks), "modules": sorted(modules)}}))
"""
    env = {**os.environ, "PYTHONPATH": str(BUNDLE_ROOT), "ULTRALYTICS_API_KEY": key}
    env.pop("YOLO_CONFIG_DIR", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["env"] is None and state["settings"] == "" and state["file"] == ""
    assert state["platform"] == 0 and not any("platform" in m or "hub" in m for m in state["modules"])
    assert "ULTRALYTICS_API_KEY is set: removed" in result.stderr and key not in result.stderr + result.stdout


class _Batch(Engine):
    """An engine whose one iteration outputs a decollated GAN batch (two 16 px crops)."""

    def __init__(self) -> None:
        crop = torch.rand(1, 16, 16)
        super().__init__(lambda engine, batch: [{"image": crop, "fake": crop, "mask": None}] * 2)


@pytest.mark.parametrize("log_images", [False, True])
def test_sample_grids_go_to_mlflow_only_with_log_images(tmp_path, log_images) -> None:
    from mlflow.tracking import MlflowClient

    from scripts.gdc_trainer import SampleImages
    from scripts.tracking import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "nasal_bone_fracture")
    run_id = tracker.start("gd-test")
    samples = SampleImages(tmp_path / "samples", 1, log_images=log_images, tracking_uri=uri, run_name="gd-test")
    engine = _Batch()
    samples.attach(engine)
    engine.run([0], max_epochs=1)
    assert (tmp_path / "samples" / "epoch_0001.png").is_file()
    logged = [a.path for a in MlflowClient(uri).list_artifacts(run_id, "samples")]
    assert logged == (["samples/epoch_0001.png"] if log_images else [])
    tracker.end(run_id)
