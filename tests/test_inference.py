"""The inference bundle config: both documented CLI commands, per-file errors, MONAI's bundle tools on network_def."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scripts import BUNDLE_ROOT

CONFIG = BUNDLE_ROOT / "configs" / "inference.yaml"
META = BUNDLE_ROOT / "configs" / "metadata.json"
ENV = {
    **os.environ,
    "PYTHONPATH": str(BUNDLE_ROOT),
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
JSON_KEYS = {
    "nasal_bone_box",
    "detector_confidence",
    "fracture_probability",
    "fracture",
    "threshold",
    "region_mask",
    "heatmap",
    "overlay",
}
DETECT = "--preprocessing#transforms#3#conf"  # DetectNasalBoned's confidence floor (0: an untrained detector finds)


def _bundle(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _check_outputs(out: Path, found: bool) -> None:
    rows = (out / "summary.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3, rows
    broken = json.loads((out / "broken.json").read_text())
    assert set(broken) == {"image", "error"}
    assert "broken.png" in broken["error"] and "not a readable image" in broken["error"]
    for i, shape in enumerate([(96, 80), (80, 112)]):
        rec = json.loads((out / f"xray{i}.json").read_text())
        assert "error" not in rec and set(rec) >= JSON_KEYS, rec
        assert rec["threshold"] == pytest.approx(0.4)
        for key in ("region_mask", "heatmap", "overlay"):
            assert not Path(rec[key]).is_absolute() and (out / rec[key]).is_file()
        assert np.asarray(Image.open(out / rec["heatmap"])).shape == shape
        assert set(np.unique(np.asarray(Image.open(out / rec["region_mask"])))) <= {0, 255}
        if found:
            assert len(rec["nasal_bone_box"]) == 4 and 0 <= rec["fracture_probability"] <= 1
            assert rec["fracture"] == (rec["fracture_probability"] >= rec["threshold"])
        else:
            assert rec["nasal_bone_box"] is None and rec["fracture_probability"] is None and rec["fracture"] is None


@pytest.mark.parametrize("run_id", ["inference", None])
def test_both_cli_commands_write_the_documented_outputs(models, inputs, tmp_path, run_id) -> None:
    out = tmp_path / "out"
    args = ["run"] + ([run_id] if run_id else []) + ["--config_file", str(CONFIG)]
    args += ["--input_dir", str(inputs), "--output_dir", str(out), "--models_dir", str(models), DETECT, "0.0"]
    _bundle(*args, "--tracking_uri", f"sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path)
    _check_outputs(out, found=True)


def test_run_inference_in_process_with_dicom_outputs(models, inputs, tmp_path) -> None:
    from scripts.inference import run_inference

    out = tmp_path / "out"
    run_inference(inputs, out, models, device="cpu", dicom_out=True, tracking_uri=f"sqlite:///{tmp_path}/m.db")
    rec = json.loads((out / "xray0.json").read_text())
    assert set(rec) >= JSON_KEYS and set(rec["dicom"]) == {"secondary_capture", "structured_report"}
    assert "error" in json.loads((out / "broken.json").read_text())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.get_experiment_by_name("nasal_bone_fracture")
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.job = 'inference'")
    assert run.info.status == "FINISHED" and run.data.metrics["images"] == 3 and run.data.metrics["errors"] == 1
    assert run.data.params["dicom_out"] == "True" and run.data.params["device"] == "cpu"
    assert all((out / name).is_file() for name in rec["dicom"].values())


def test_verify_net_in_out_and_torchscript_export(models, tmp_path) -> None:
    _bundle("verify_net_in_out", "network_def", "--meta_file", str(META), "--config_file", str(CONFIG), cwd=tmp_path)
    common = ["--config_file", str(CONFIG), "--models_dir", str(models), "--output_dir", str(tmp_path)]
    ts = tmp_path / "classifier.ts"
    _bundle(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(ts),
        "--ckpt_file",
        str(models / "classifier.pt"),  # the bundle's own weights file: C's state dict is under "classifier"
        "--key_in_ckpt",
        "classifier",
        "--use_trace",
        "True",
        "--input_shape",
        "[1, 1, 64, 64]",
        "--meta_file",
        str(META),
        *common,
        cwd=tmp_path,
    )
    from scripts.classifier import load_classifier

    eager, _ = load_classifier(models / "classifier.pt")
    scripted = torch.jit.load(str(ts))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-5, rtol=0)
