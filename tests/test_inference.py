"""The inference bundle config: both documented CLI commands, per-file errors, MONAI's bundle tools on network_def."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
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
    "logit",
    "finding",
    "thresholds",
    "region_mask",
    "heatmap",
    "overlay",
}
DETECT = "--preprocessing#transforms#4#conf"  # DetectNasalBoned's confidence floor (0: an untrained detector finds)


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
        assert rec["thresholds"] == {"suspicious": 0.4, "fracture": 0.4}  # weights without the calibration step
        if found:
            assert len(rec["nasal_bone_box"]) == 4 and 0 <= rec["fracture_probability"] <= 1
            assert rec["fracture"] == (rec["fracture_probability"] >= rec["threshold"])
            assert rec["fracture_probability"] == pytest.approx(1 / (1 + np.exp(-rec["logit"])))  # temperature 1
            assert rec["finding"] == ("fracture" if rec["fracture"] else "no fracture")
        else:
            assert rec["nasal_bone_box"] is None and rec["fracture_probability"] is None and rec["fracture"] is None
            assert rec["finding"] == "not assessable" and rec["finding_reason"] == "no nasal bone found"


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
    assert rec["nasal_bone_box"] is None and rec["finding"] == "not assessable"  # the untrained detector finds none
    assert rec["finding_reason"] == "no nasal bone found" and rec["logit"] is None
    assert not np.asarray(Image.open(out / rec["region_mask"])).any()
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


def test_bad_inputs_are_one_line_errors_and_the_batch_goes_on(models, tmp_path) -> None:
    """UID-named DICOM found by content; decoder, size, JSON and DICOM-output failures each stay with their file."""
    from mlflow.tracking import MlflowClient
    from pydicom.data import get_testdata_file

    from scripts.imageio import save_xray
    from scripts.inference import run_inference

    src, out, uid = tmp_path / "in", tmp_path / "out", "1.2.840.113619.2.55.3.604688.1"
    (src / "sub").mkdir(parents=True)
    Image.fromarray((np.random.default_rng(1).random((96, 80)) * 255).astype(np.uint8)).save(src / "sub" / "good.png")
    save_xray(src / "x", np.random.default_rng(2).random((80, 96)), "dcm").rename(src / uid)  # a PACS export name
    lossy_ds = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))  # no 12-bit decoder here
    lossy_ds.Modality, lossy_ds.SOPClassUID = "CR", "1.2.840.10008.5.1.4.1.1.1"  # an NM file: as a radiograph
    lossy_ds.BodyPartExamined = "SKULL"
    lossy_ds.save_as(src / "lossy.dcm")  # (its compressed pixel data unchanged) so that it reaches the decoder
    Image.new("L", (7000, 7000)).save(src / "giant.png")  # 49 megapixels, over the default max_pixels
    (src / "notes").write_bytes(b"no suffix and not DICOM: skipped")
    (out / "good.json").mkdir(parents=True)  # good.json cannot be written
    (out / f"{uid}_sc.dcm").mkdir()  # nor the UID file's DICOM Secondary Capture
    run_inference(src, out, models, device="cpu", dicom_out=True, tracking_uri=f"sqlite:///{tmp_path}/m.db")

    with open(out / "summary.csv", newline="") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"sub/good.png", uid, "lossy.dcm", "giant.png"}
    assert all("\n" not in r["error"] and "\n" not in r["dicom_error"] for r in rows.values())
    assert rows["sub/good.png"]["status"] == "error" and "cannot write good.json" in rows["sub/good.png"]["error"]
    assert rows["sub/good.png"]["threshold"] and (out / "good_overlay.png").is_file()  # findings kept
    rec = json.loads((out / f"{uid}.json").read_text())  # findings kept, DICOM failure added
    assert rows[uid]["status"] == "ok" and "error" not in rec and set(rec) >= JSON_KEYS
    assert rec["dicom_error"].startswith(f"{uid}: ") and rows[uid]["dicom_error"] == rec["dicom_error"]
    lossy = json.loads((out / "lossy.json").read_text())
    assert set(lossy) == {"image", "error"} and lossy["error"].startswith("lossy.dcm: cannot decode DICOM pixel data")
    giant = json.loads((out / "giant.json").read_text())["error"]
    assert giant.startswith("giant.png: image too large (7000x7000") and "max_pixels=40000000" in giant

    run = MlflowClient(f"sqlite:///{tmp_path}/m.db").search_runs(["1"], filter_string="tags.job = 'inference'")[0]
    assert run.data.metrics["images"] == 4 and run.data.metrics["errors"] == 3 and run.data.metrics["dicom_errors"] == 1
    written = [p for p in [*out.rglob("*"), tmp_path / "m.db"] if p.is_file()]
    assert not [p for p in written if str(src).encode() in p.read_bytes()]  # inputs named relative to the folder


def test_summary_rows_are_written_as_each_file_finishes(tmp_path) -> None:
    from types import SimpleNamespace

    from scripts.inference_writer import InferenceSummary

    summary = InferenceSummary(tmp_path, total=2)
    engine = SimpleNamespace(state=SimpleNamespace(output=None))
    summary.started(engine)
    engine.state.output = [{"record": {"image": "a.png", "error": "a.png: file is empty (0 bytes)"}, "record_file": ""}]
    summary.collect(engine)  # first file done; the run goes on (or is killed here)
    with open(tmp_path / "summary.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["image"] == "a.png" and row["status"] == "error" and row["error"].endswith("empty (0 bytes)")


def test_unreadable_suffixless_file_is_listed_not_skipped(tmp_path, monkeypatch) -> None:
    from scripts.inference import input_data

    (tmp_path / "IM0001").write_bytes(b"\0" * 200)
    (tmp_path / "notes").write_bytes(b"\0" * 200)

    def is_dicom(path) -> bool:  # tests run as root: file permissions would not stop them reading
        if Path(path).name == "IM0001":
            raise PermissionError(13, "Permission denied", str(path))
        return False

    monkeypatch.setattr("pydicom.misc.is_dicom", is_dicom)
    (item,) = input_data(tmp_path)  # its error is reported by the loader (tests/test_imageio.py), not a crash here
    assert item["name"] == "IM0001" and item["stem"] == "IM0001"


def test_missing_or_damaged_weights_give_one_line_and_exit_1(models, inputs, tmp_path) -> None:
    bad = tmp_path / "models"
    bad.mkdir()
    (bad / "detector.pt").write_bytes((models / "detector.pt").read_bytes())
    (bad / "classifier.pt").write_bytes((models / "classifier.pt").read_bytes()[:5000])  # truncated copy
    args = ["run", "--config_file", str(CONFIG), "--input_dir", str(inputs), "--output_dir", str(tmp_path / "out")]
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args, "--models_dir", str(bad)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cannot run inference: ") and "classifier.pt: not a readable weights file" in last
    assert "gdc2.pt is missing" in last and "detector.pt" not in last
    assert not (tmp_path / "out").exists()  # stopped before anything was written


def test_require_weights_names_every_damaged_or_foreign_file(models, tmp_path) -> None:
    from scripts.inference import ModelFilesError, require_weights

    (tmp_path / "detector.pt").write_bytes(b"not a weights file")
    (tmp_path / "classifier.pt").write_bytes((models / "gdc2.pt").read_bytes())  # another stage's weights
    (tmp_path / "gdc2.pt").write_bytes((models / "gdc2.pt").read_bytes())
    with pytest.raises(ModelFilesError) as err:
        require_weights(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "detector.pt: not a weights file that loads safely" in message
    assert "classifier.pt: expected a 'nasal-fracture-classifier/2' checkpoint" in message
    assert "gdc2.pt" not in message and message.endswith("retrain or copy it again")
    assert set(require_weights(models)) == {"detector", "classifier", "gdc2"}


def _item(tmp_path: Path, logit: float, found: bool = True) -> dict:
    """One decollated item as the writer receives it: a 200x240 image, its box, C's logit and an all-ones crop map."""
    ones = torch.ones(1, 16, 16)
    return {
        "xray": torch.rand(1, 200, 240),
        "path": str(tmp_path / "x.png"),
        "name": "x.png",
        "stem": f"x{logit}",
        "box": np.array([90.0, 90.0, 170.0, 170.0]),
        "detector_box": np.array([100.0, 95.0, 160.0, 165.0]),
        "detector_confidence": 0.9 if found else 0.01,
        "box_source": "detector" if found else "none",
        "pred": {"pred": torch.tensor([logit]), "heatmap": 0.7 * ones, "region": ones.bool()},
    }


def test_finding_from_the_calibrated_probability_and_region_only_from_the_suspicious_point(tmp_path) -> None:
    """temperature 2, suspicious 0.3, fracture 0.7, main threshold 0.5: each finding, its JSON, PNGs and overlay."""
    from scripts.inference_writer import WriteFractureOutputsd

    writer = WriteFractureOutputsd(
        tmp_path, threshold=0.5, temperature=2.0, thresholds={"suspicious": 0.3, "fracture": 0.7}
    )
    expected = {-4.0: "no fracture", -1.0: "suspicious", 1.0: "suspicious", 4.0: "fracture"}
    for logit, finding in expected.items():
        rec = writer(_item(tmp_path, logit))["record"]
        assert rec["logit"] == logit and rec["fracture_probability"] == pytest.approx(1 / (1 + np.exp(-logit / 2)))
        assert rec["finding"] == finding and "finding_reason" not in rec
        assert rec["fracture"] == (logit > 0)  # the main threshold (0.5), whatever the finding
        assert rec["threshold"] == 0.5 and rec["thresholds"] == {"suspicious": 0.3, "fracture": 0.7}
        region = np.asarray(Image.open(tmp_path / rec["region_mask"]))
        heat = np.asarray(Image.open(tmp_path / rec["heatmap"]))
        assert region.shape == heat.shape == (200, 240)
        assert region.any() == heat.any() == (finding != "no fracture")  # empty below the suspicious point
    overlays = {f: np.asarray(Image.open(tmp_path / f"x{z}_overlay.png")) for z, f in expected.items()}
    box = overlays["fracture"][95, 100:161]  # the box's top edge: solid for a fracture, dashed when suspicious
    dashed = overlays["suspicious"][95, 100:161]
    assert (box == (230, 40, 40)).all(axis=-1).all() and (dashed == (255, 150, 30)).all(axis=-1).any()
    assert not (dashed == (255, 150, 30)).all(axis=-1).all()

    rec = writer(_item(tmp_path, 9.0, found=False))["record"]
    assert rec["finding"] == "not assessable" and rec["finding_reason"] == "no nasal bone found"
    assert rec["fracture_probability"] is None and rec["logit"] is None
    assert not np.asarray(Image.open(tmp_path / rec["region_mask"])).any()
    low = {**_item(tmp_path, 9.0, found=False), "not_assessable": "nasal bone box confidence 0.01 is below the floor"}
    rec = writer(low)["record"]  # the detector's reason, when it gives one
    assert rec["finding"] == "not assessable" and rec["finding_reason"] == low["not_assessable"]


def test_calibrated_weights_end_to_end(models, inputs, tmp_path) -> None:
    """A classifier.pt with a temperature and two operating points: the bundle's JSON, PNGs and summary use them."""
    from monai.bundle import ConfigWorkflow

    from scripts.classifier import load_classifier, save_classifier

    weights = tmp_path / "models"
    weights.mkdir()
    for name in ("detector.pt", "gdc2.pt"):
        (weights / name).write_bytes((models / name).read_bytes())
    net, info = load_classifier(models / "classifier.pt")
    info = {k: v for k, v in info.items() if k not in ("config", "threshold")}
    info["calibration"] = {"method": "temperature", "temperature": 2.0}
    info["operating_points"] = {"suspicious": {"threshold": 0.9999}, "fracture": {"threshold": 0.99999}}
    save_classifier(weights / "classifier.pt", net, 0.4, info)
    out = tmp_path / "out"
    workflow = ConfigWorkflow(
        config_file=str(CONFIG),
        meta_file=str(META),
        logging_file=False,
        workflow_type="infer",
        input_dir=str(inputs),
        output_dir=str(out),
        models_dir=str(weights),
        device=torch.device("cpu"),
        tracking_uri=f"sqlite:///{tmp_path}/m.db",
        **{DETECT.removeprefix("--"): 0.0},
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    with open(out / "summary.csv", newline="") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    for i in range(2):
        rec = json.loads((out / f"xray{i}.json").read_text())
        assert set(rec) >= JSON_KEYS and rec["temperature"] == 2.0
        assert rec["thresholds"] == {"suspicious": 0.9999, "fracture": 0.99999} and rec["threshold"] == 0.4
        assert rec["fracture_probability"] == pytest.approx(1 / (1 + np.exp(-rec["logit"] / 2)))
        assert rec["finding"] == "no fracture" and rows[f"xray{i}.png"]["finding"] == "no fracture"
        assert not np.asarray(Image.open(out / rec["region_mask"])).any()  # below the suspicious point: empty
        assert not np.asarray(Image.open(out / rec["heatmap"])).any()
