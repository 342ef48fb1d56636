"""The top-level bundle: chained training (tiny profile) tracked on a real MLflow server, then inference."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from PIL import Image

from scripts import BUNDLE_ROOT
from scripts.pipeline import train_all
from tests.servers import start_mlflow_server, stop_process_group

CONFIGS = BUNDLE_ROOT / "configs"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 with a sqlite backend, stopped (whole process group) afterwards."""
    uri, proc = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    yield uri
    stop_process_group(proc)


@pytest.fixture(scope="module")
def trained(tiny_dataset, mlflow_server, tmp_path_factory):
    """Every stage trained for one epoch on the tiny dataset, tracked on the MLflow server."""
    from monai.bundle import ConfigParser

    root = tmp_path_factory.mktemp("pipeline")
    config = ConfigParser.load_config_files(CONFIGS / "train.yaml")
    summary = train_all(
        config["stages"],
        profile="tiny",
        dataset_dir=str(tiny_dataset),
        output_dir=str(root / "run"),
        models_dir=str(root / "models"),
        tracking_uri=mlflow_server,
    )
    return {"summary": summary, "root": root, "models": root / "models", "stages": config["stages"]}


def test_chained_training_writes_usable_weights(trained) -> None:
    assert trained["summary"]["status"] == "FINISHED"
    for stage in trained["stages"]:
        for weights in stage["weights"]:
            assert (trained["models"] / weights).stat().st_size > 0, weights
    assert json.loads((trained["root"] / "run" / "pipeline.json").read_text())["status"] == "FINISHED"


def test_mlflow_server_has_parent_and_nested_stage_runs(trained, mlflow_server) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    parent = client.get_run(trained["summary"]["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(r.data.tags["stage"] for r in children) == sorted(s["name"] for s in trained["stages"])
    classifier = next(r for r in children if r.data.tags["stage"] == "classifier")
    assert classifier.data.metrics  # per-epoch metrics landed in the nested run
    assert any(k.startswith("classifier") for k in classifier.data.params)
    gdc2 = next(r for r in children if r.data.tags["stage"] == "gdc2")
    assert any(k.startswith("gradcam/") for k in gdc2.data.metrics)  # the localisation table is in the stage's run
    top_level = [r for r in client.search_runs([parent.info.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_id for r in top_level] == [parent.info.run_id]  # no stray runs beside the pipeline's


def test_rerun_skips_stages_with_weights(trained, tiny_dataset, mlflow_server) -> None:
    summary = train_all(
        trained["stages"],
        profile="tiny",
        dataset_dir=str(tiny_dataset),
        output_dir=str(trained["root"] / "run"),
        models_dir=str(trained["models"]),
        tracking_uri=mlflow_server,
    )
    assert all(s["status"].startswith("skipped") for s in summary["stages"].values())


def test_inference_on_mixed_folder_writes_every_output(trained, tiny_dataset, tmp_path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    images = sorted((tiny_dataset / "images").iterdir())
    for path in images[:6]:
        shutil.copy(path, inputs / path.name)
    (inputs / "broken.png").write_bytes(b"\x89PNG not really")
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(BUNDLE_ROOT), "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0"}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    args = ["--input_dir", str(inputs), "--output_dir", str(out), "--models_dir", str(trained["models"])]
    args += ["--dicom_out", "True", "--tracking_uri", f"sqlite:///{tmp_path}/m.db"]
    result = subprocess.run(  # the documented command
        [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(CONFIGS / "inference.yaml")]
        + args,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = (out / "summary.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 7  # header + 6 images + the broken file; the .txt is skipped
    broken = json.loads((out / "broken.json").read_text())
    assert "broken.png" in broken["error"] and "not a readable image" in broken["error"]
    for path in images[:6]:
        rec = json.loads((out / f"{path.name.split('.')[0]}.json").read_text())
        assert "error" not in rec, rec
        assert set(rec) >= {
            "nasal_bone_box",
            "detector_confidence",
            "fracture_probability",
            "fracture",
            "threshold",
            "region_mask",
            "heatmap",
            "overlay",
        }
        shape = Image.open(out / rec["overlay"]).size
        for key in ("region_mask", "heatmap"):
            arr = np.asarray(Image.open(out / rec[key]))
            assert arr.dtype == np.uint8 and arr.shape == (shape[1], shape[0])
        assert set(np.unique(np.asarray(Image.open(out / rec["region_mask"])))) <= {0, 255}
        if rec["nasal_bone_box"] is not None:
            assert 0 <= rec["fracture_probability"] <= 1 and rec["fracture"] == (
                rec["fracture_probability"] >= rec["threshold"]
            )
        sc = pydicom.dcmread(out / rec["dicom"]["secondary_capture"])
        assert sc.Rows == shape[1] and sc.Columns == shape[0]
        pydicom.dcmread(out / rec["dicom"]["structured_report"])
