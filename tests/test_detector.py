"""Stage 1, the nasal bone detector: YOLO export, coordinate mapping, the Ignite trainer, offline training through
MONAI's CLI with ``--tracking mlflow``, evaluation and inference."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ignite.engine import Events
from PIL import Image

from scripts.dataset import read_dataset
from scripts.detector import DetectNasalBoned, NasalBoneDetector
from scripts.detector_training import DetectorTrainer, YoloSaltPepper, metric_name
from scripts.geometry import Letterbox, landmark_box
from scripts.imageio import load_xray
from scripts.yolo_export import box_from_yolo_label, export_yolo_dataset, yolo_label

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "bundle" / "configs"
FRACTIONS = [0.5, 0.25, 0.25]  # 12 patients: 6 / 3 / 3, so the tiny dataset has a validation split


def _rectangle_image(shape, box, background=0.2):
    """An image with a bright rectangle covering pixel columns x1..x2 and rows y1..y2 (inclusive)."""
    img = np.full(shape, background, dtype=np.float32)
    x1, y1, x2, y2 = box
    img[y1 : y2 + 1, x1 : x2 + 1] = 1.0
    return img


def _pixel_box(box):
    """The ``scripts.geometry`` box of inclusive pixel ranges: pixel edges are half a pixel out."""
    x1, y1, x2, y2 = box
    return np.array([x1 - 0.5, y1 - 0.5, x2 + 0.5, y2 + 0.5])


class _BrightBoxModel:
    """Stands in for the network: 'detects' the bright (white) pixels of the model input, in input coordinates."""

    def __call__(self, x: torch.Tensor):
        rows, cols = torch.nonzero(x[0, 0] > 0.9, as_tuple=True)
        x1, x2 = cols.min().item(), cols.max().item() + 1.0  # Ultralytics: input pixel c spans [c, c + 1]
        y1, y2 = rows.min().item(), rows.max().item() + 1.0
        pred = torch.tensor([[(x1 + x2) / 2], [(y1 + y2) / 2], [x2 - x1], [y2 - y1], [0.9]])
        return pred[None], None


def _stub_detector(imgsz: int) -> NasalBoneDetector:
    det = NasalBoneDetector.__new__(NasalBoneDetector)
    det.model, det.imgsz, det.conf, det.end2end, det.margin = _BrightBoxModel(), imgsz, 0.05, False, 0.3
    det.network = lambda x: det.model(x)[0]  # the runtime wrapper: raw predictions only (scripts.detector)
    det.device = torch.device("cpu")
    return det


@pytest.mark.parametrize("shape", [(300, 500), (500, 300), (256, 256), (1000, 640)])
@pytest.mark.parametrize("imgsz", [128, 320])
def test_letterbox_maps_boxes_both_ways(shape, imgsz):
    lb = Letterbox.fit(shape, imgsz)
    box = np.array([0.25 * shape[1], 0.4 * shape[0], 0.5 * shape[1], 0.7 * shape[0]])
    np.testing.assert_allclose(lb.to_original(lb.to_input(box)), box, atol=1e-9)
    full = lb.to_input([-0.5, -0.5, shape[1] - 0.5, shape[0] - 0.5])  # the whole image lands on the resized region
    nh, nw = lb.resized
    np.testing.assert_allclose(full, [lb.left, lb.top, lb.left + nw, lb.top + nh], atol=1e-9)
    assert max(nh, nw) == imgsz and lb.apply(np.zeros(shape, np.float32)).shape == (imgsz, imgsz)


@pytest.mark.parametrize(
    "shape,rect",
    [((300, 500), (300, 120, 359, 169)), ((520, 330), (40, 300, 99, 339)), ((512, 512), (380, 260, 419, 319))],
)
def test_predicted_box_maps_back_for_non_square_and_rescaled_inputs(shape, rect):
    det = _stub_detector(imgsz=256)
    img = _rectangle_image(shape, rect)
    truth = _pixel_box(rect)
    box, conf = det.predict(img)
    tol = 1.0 / Letterbox.fit(shape, 256).sx + 0.5  # one input pixel, in original pixels
    assert conf == pytest.approx(0.9)
    np.testing.assert_allclose(box, truth, atol=tol)

    # Rescaled 2x (every pixel becomes 2x2): the box scales with it.
    big = np.kron(img, np.ones((2, 2), np.float32))
    box2, _ = det.predict(big)
    np.testing.assert_allclose(
        box2, _pixel_box((2 * rect[0], 2 * rect[1], 2 * rect[2] + 1, 2 * rect[3] + 1)), atol=2 * tol
    )
    # Padded on the left and at the top (now non-square): the box moves by the padding.
    padded = np.pad(img, ((37, 0), (101, 0)), constant_values=0.2)
    box3, _ = det.predict(padded)
    np.testing.assert_allclose(box3, truth + [101, 37, 101, 37], atol=1.0 / Letterbox.fit(padded.shape, 256).sx + 0.5)


def test_export_writes_normalised_yolo_labels(tiny_dataset, tmp_path):
    split_file = tmp_path / "split.csv"
    data_yaml = Path(export_yolo_dataset(tiny_dataset, split_file, tmp_path / "yolo", 0.3, FRACTIONS, 0))
    root = data_yaml.parent
    text = data_yaml.read_text()
    assert "train: images/train" in text and "val: images/val" in text and "test: images/test" in text
    assert "0: nasal_bone" in text
    records = {r["id"]: r for r in read_dataset(tiny_dataset)}
    with open(split_file, newline="") as f:
        split_of = {row["image"]: row["split"] for row in csv.DictReader(f)}
    assert sum(1 for _ in root.glob("labels/*/*.txt")) == len(records)
    for rid, rec in records.items():
        stem = os.path.splitext(rid.replace(".nii.gz", ""))[0].replace("/", "__")
        png = root / "images" / split_of[rid] / f"{stem}.png"
        label = root / "labels" / split_of[rid] / f"{stem}.txt"
        original = load_xray(rec["image"])
        with Image.open(png) as im:
            assert im.mode == "L" and im.size == (original.shape[1], original.shape[0])
            np.testing.assert_array_equal(np.asarray(im), np.round(original * 255).astype(np.uint8))
        cls, *vals = label.read_text().split()
        assert cls == "0" and all(0.0 <= float(v) <= 1.0 for v in vals)
        h, w = original.shape
        x1, y1, x2, y2 = landmark_box((rec["nasion_x"], rec["nasion_y"]), (rec["tip_x"], rec["tip_y"]), margin=0.3)
        # the landmark box, clipped to the image, in Ultralytics' normalised pixel-edge coordinates
        e = np.clip([x1 + 0.5, y1 + 0.5, x2 + 0.5, y2 + 0.5], 0, [w, h, w, h])
        expected = [(e[0] + e[2]) / 2 / w, (e[1] + e[3]) / 2 / h, (e[2] - e[0]) / w, (e[3] - e[1]) / h]
        np.testing.assert_allclose([float(v) for v in vals], expected, atol=2e-6)
        np.testing.assert_allclose(box_from_yolo_label(vals, (h, w)), e - 0.5, atol=1e-3)

    # Cached: a second export reuses the files; a changed split file re-exports.
    stamp = (root / "export.json").stat().st_mtime_ns
    export_yolo_dataset(tiny_dataset, split_file, tmp_path / "yolo", 0.3, FRACTIONS, 0)
    assert (root / "export.json").stat().st_mtime_ns == stamp
    lines = split_file.read_text().splitlines()
    split_file.write_text("\n".join(lines[:1] + lines[1:][::-1]) + "\n")
    export_yolo_dataset(tiny_dataset, split_file, tmp_path / "yolo", 0.3, FRACTIONS, 0)
    assert (root / "export.json").stat().st_mtime_ns != stamp


def test_yolo_label_round_trip_non_square():
    shape = (300, 500)
    box = np.array([100.2, 50.7, 180.9, 140.1])
    np.testing.assert_allclose(box_from_yolo_label(yolo_label(box, shape), shape), box, atol=1e-9)


def test_salt_pepper_hits_the_requested_fraction_of_pixels_in_every_channel():
    gray = np.random.default_rng(0).integers(30, 220, (120, 90), dtype=np.uint8)
    img = np.repeat(gray[..., None], 3, axis=2)
    out = YoloSaltPepper(prob=1.0, amount=0.05, seed=1)({"img": img.copy()})["img"]
    changed = (out != img).any(axis=2)
    assert changed.sum() == round(0.05 * gray.size)
    assert set(np.unique(out[changed])) == {0, 255} and (out == out[..., :1]).all()
    assert (YoloSaltPepper(prob=0.0, seed=1)({"img": img.copy()})["img"] == img).all()


class _Recorder:
    """An Ignite handler recording what it sees at each event: (event, epoch, iteration, metrics, output)."""

    def __init__(self, stop_at_epoch: int | None = None):
        self.seen, self.stop_at_epoch = [], stop_at_epoch

    def attach(self, engine) -> None:
        for event in (Events.STARTED, Events.ITERATION_COMPLETED, Events.EPOCH_COMPLETED, Events.COMPLETED):
            engine.add_event_handler(event, self.record, event)

    def record(self, engine, event) -> None:
        s = engine.state
        self.seen.append((event, s.epoch, s.iteration, dict(s.metrics or {}), s.output))
        if event == Events.EPOCH_COMPLETED and s.epoch == self.stop_at_epoch:
            engine.terminate()


def _ultralytics_epoch(epoch: int, final_eval: bool = False) -> SimpleNamespace:
    """What Ultralytics' DetectionTrainer exposes to an ``on_fit_epoch_end`` callback (3 batches an epoch)."""
    names = ("box_loss", "cls_loss", "dfl_loss")
    return SimpleNamespace(
        epoch=epoch,
        tloss={n: torch.tensor(v / (epoch + 1)) for n, v in zip(names, (1.0, 0.5, 0.25), strict=True)},
        label_loss_items=lambda loss, prefix: {f"{prefix}/{k}": float(v) for k, v in loss.items()},
        metrics={"metrics/precision(B)": 0.5, "metrics/mAP50(B)": 0.1 * epoch, "metrics/mAP50-95(B)": 0.05},
        lr={"lr/pg0": 0.002},
        train_loader=[None] * 3,
        stop=False,
        final_evaluating=final_eval,
    )


class _FakeYOLO:
    """Stands in for ``ultralytics.YOLO``: runs the epochs' callbacks (and the final re-validation's) only."""

    def __init__(self, model, task=None):
        self.callbacks = []

    def add_callback(self, name, fn):
        assert name == "on_fit_epoch_end"
        self.callbacks.append(fn)

    def train(self, epochs, **kwargs):
        for epoch in range(epochs):
            tr = _ultralytics_epoch(epoch)
            for fn in self.callbacks:
                fn(tr)
            if tr.stop:
                break
        for fn in self.callbacks:
            fn(_ultralytics_epoch(epoch + 1, final_eval=True))


@pytest.mark.parametrize("stop_at_epoch", [None, 2])
def test_trainer_fires_ignite_events_with_each_ultralytics_epoch(tmp_path, monkeypatch, stop_at_epoch):
    import ultralytics

    import scripts.detector_training as training

    monkeypatch.setattr(ultralytics, "YOLO", _FakeYOLO)
    saved = []
    monkeypatch.setattr(training, "save_detector", lambda *args, **kwargs: saved.append(args))
    monkeypatch.setattr(training, "choose_confidence_floor", lambda *args: (0.0, {"rule": "-", "correct_boxes": 0}))
    monkeypatch.setattr(training, "set_confidence_floor", lambda *args: None)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "export.json").write_text("{}")
    rec = _Recorder(stop_at_epoch)
    trainer = DetectorTrainer(
        str(tmp_path / "data" / "data.yaml"), str(tmp_path / "train"), str(tmp_path / "detector.pt"), "yolov8n.yaml",
        64, 4, 2, "AdamW", 0.002, 0.3, threads=1, train_handlers=[rec],
    )  # fmt: skip
    summary = trainer.run()

    epochs = stop_at_epoch or 4
    events = [e for e, *_ in rec.seen]
    assert events == [Events.STARTED] + [Events.ITERATION_COMPLETED, Events.EPOCH_COMPLETED] * epochs + [
        Events.COMPLETED
    ]
    per_epoch = [(ep, it, m, out) for e, ep, it, m, out in rec.seen if e == Events.EPOCH_COMPLETED]
    assert [(ep, it) for ep, it, _, _ in per_epoch] == [(k, 3 * k) for k in range(1, epochs + 1)]
    for ep, _, metrics, output in per_epoch:
        assert metrics["val_mAP50"] == pytest.approx(0.1 * (ep - 1)) and metrics["lr_pg0"] == 0.002
        assert {"train_box_loss", "train_cls_loss", "train_dfl_loss", "val_precision", "val_mAP50_95"} <= set(metrics)
        assert not any(c in k for k in metrics for c in "()")
        assert output == [{"loss": pytest.approx(1.75 / ep)}]
    assert trainer.state.best_metrics["val_mAP50"] == pytest.approx(0.1 * epochs)  # the final re-validation
    assert summary["mode"] == "trained" and len(saved) == 1 and trainer.state.summary == summary
    assert json.loads((tmp_path / "train" / "detector_run.json").read_text())["complete"] is True


def test_metric_names_are_plain():
    assert metric_name("metrics/mAP50-95(B)") == "val_mAP50_95"
    assert metric_name("train/box_loss") == "train_box_loss" and metric_name("lr/pg0") == "lr_pg0"


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to reach the network is recorded and fails."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


# `python -m monai.bundle ...` with every network connection refused and written to the file named first
NETWORK_GUARD = """
import runpy, socket, sys
log = sys.argv.pop(1)
def refuse(*args, **kwargs):
    with open(log, "a") as f:
        f.write(repr(args[1:3]) + "\\n")
    raise OSError("network access attempted in an offline test")
socket.socket.connect = socket.socket.connect_ex = refuse
socket.create_connection = socket.getaddrinfo = refuse
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""
STAGE = [str(CONFIGS / f) for f in ("common.yaml", "detector.yaml", "profiles/tiny.yaml")]


def _tracking_uri(config_files: list[str], output_dir: Path) -> str:
    """The MLflow store ``--tracking mlflow`` uses: the config's ``tracking_uri``, else MONAI's default."""
    from monai.bundle import ConfigParser
    from monai.utils import path_to_sqlite_uri

    parser = ConfigParser()
    parser.read_config(config_files)
    parser["output_dir"] = str(output_dir)
    if "tracking_uri" in parser:
        return parser.get_parsed_content("tracking_uri")
    return path_to_sqlite_uri(str(output_dir / "mlruns.db"))


@pytest.fixture(scope="module")
def cli_trained(tiny_dataset, tmp_path_factory):
    """The detector stage run once through MONAI's CLI with ``--tracking mlflow``, offline (tiny profile)."""
    root = tmp_path_factory.mktemp("detector_cli")
    cwd, out, attempts = root / "cwd", root / "out", root / "network_attempts.txt"
    cwd.mkdir()
    cmd = [sys.executable, "-c", NETWORK_GUARD, str(attempts), "run", "--config_file", str(STAGE)]
    cmd += ["--dataset_dir", str(tiny_dataset), "--output_dir", str(out), "--models_dir", str(out / "models")]
    cmd += ["--split_fractions", str(FRACTIONS), "--tracking", "mlflow"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "bundle"), "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0"}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return SimpleNamespace(cwd=cwd, out=out, models=out / "models", attempts=attempts, log=proc.stdout + proc.stderr)


def test_cli_training_offline_with_mlflow_tracking(cli_trained):
    from mlflow import MlflowClient

    assert not cli_trained.attempts.exists(), cli_trained.attempts.read_text()
    assert list(cli_trained.cwd.iterdir()) == []  # no runs/detect, mlruns or mlflow.db in the working directory
    ckpt = torch.load(cli_trained.models / "detector.pt", map_location="cpu", weights_only=True)
    assert ckpt["imgsz"] == 64 and ckpt["margin"] == 0.3 and ckpt["names"] == ["nasal_bone"]
    meta = json.loads((cli_trained.models / "detector.json").read_text())
    assert meta["imgsz"] == 64
    # the confidence floor was chosen on the validation images and stored with the weights
    assert 0.0 <= ckpt["confidence_floor"] == meta["confidence_floor"] <= 1.0
    assert meta["confidence_floor_choice"]["validation_images"] > 0
    assert "train_loss" in cli_trained.log  # the StatsHandler of train#handlers

    client = MlflowClient(_tracking_uri(STAGE, cli_trained.out))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    ultralytics = {"train_box_loss", "train_cls_loss", "train_dfl_loss", "val_precision", "val_recall"}
    assert ultralytics | {"val_mAP50", "val_mAP50_95", "train_loss"} <= set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "val_mAP50")
    assert [m.step for m in history] == [1]  # one tiny epoch, logged at epoch 1
    assert run.data.params["model"] == "yolov8n.yaml" and run.data.params["imgsz"] == "64"


def test_evaluation_and_inference_offline(cli_trained, tiny_dataset, tmp_path, monkeypatch, no_network):
    from mlflow import MlflowClient
    from monai.bundle import run

    monkeypatch.chdir(tmp_path)
    out, models = cli_trained.out, cli_trained.models
    tracking_uri = "sqlite:///" + str(tmp_path / "evaluation.db")  # not the training's store
    overrides = dict(dataset_dir=str(tiny_dataset), output_dir=str(out), models_dir=str(models))
    evaluate = [*STAGE[:2], str(CONFIGS / "detector_evaluate.yaml"), STAGE[2]]
    run(config_file=evaluate, tracking="mlflow", tracking_uri=tracking_uri, split_fractions=FRACTIONS, **overrides)

    assert no_network == []
    result = json.loads((out / "detector" / "evaluation.json").read_text())
    assert result["images"] > 0 and 0.0 <= result["mean_iou"] <= 1.0 and result["failures"] <= result["images"]
    assert {"mAP50", "contains_both_landmarks"} <= set(result)
    assert (out / "detector" / "evaluation_per_image_test.csv").is_file()
    with Image.open(out / "detector" / "predictions_test.png") as im:
        assert im.size == (4 * 320, 320 * -(-min(result["images"], 16) // 4))  # 4 tiles a row, up to 16
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("nasal_bone_fracture").experiment_id])
    logged = {k: v for r in runs for k, v in r.data.metrics.items()}
    assert logged["test_mean_iou"] == pytest.approx(result["mean_iou"]) and "test_mAP50" in logged

    # The trained weights in inference: any image shape, a box in its pixels or none; the MONAI transform.
    det = NasalBoneDetector(models / "detector.pt", conf=0.0)
    img = load_xray(next(iter(read_dataset(tiny_dataset)))["image"])
    box, conf = det.predict(np.pad(img, ((0, 40), (0, 0)), constant_values=0.0))
    assert box is not None and box.shape == (4,) and 0.0 <= conf <= 1.0
    d = DetectNasalBoned(keys="image", weights=str(models / "detector.pt"), crop_size=32, conf=0.0)(
        {"image": torch.from_numpy(img)[None]}
    )
    assert d["crop"].shape == (1, 32, 32) and d["image"].shape == (1, *img.shape)
    x1, y1, x2, y2 = d["box"]
    assert x2 - x1 == pytest.approx(y2 - y1) and d["box_source"] == "detector"


def test_detector_weights_cannot_run_code(models, tmp_path) -> None:
    """A detector.pt whose model description carries code (Ultralytics would eval its activation) is refused."""
    from scripts.checkpoint import CheckpointError, atomic_save
    from scripts.detector import NasalBoneDetector

    marker = tmp_path / "ran"
    ckpt = torch.load(models / "detector.pt", map_location="cpu", weights_only=True)
    ckpt["yaml"]["activation"] = f"__import__('pathlib').Path({str(marker)!r}).touch() or nn.SiLU()"
    crafted = atomic_save(ckpt, tmp_path / "detector.pt")
    with pytest.raises(CheckpointError, match="refused model description"):
        NasalBoneDetector(crafted)
    assert not marker.exists()
    assert os.environ.get("ULTRALYTICS_SAFE_LOAD") == "1"  # Ultralytics' own loads are restricted too


def test_a_box_below_the_confidence_floor_is_not_assessable(models, tmp_path) -> None:
    """A box the detector finds with less confidence than its floor (chosen on validation) is not trusted."""
    import shutil

    from scripts.detector import DetectNasalBoned, set_confidence_floor

    img = torch.rand(1, 96, 80)
    shutil.copy(models / "detector.pt", tmp_path / "detector.pt")
    trusted = DetectNasalBoned(keys="image", weights=str(tmp_path / "detector.pt"), crop_size=32, conf=0.0)(
        {"image": img}
    )
    assert trusted["box_source"] == "detector" and "not_assessable" not in trusted
    set_confidence_floor(tmp_path / "detector.pt", 1.01, {"rule": "test"})
    d = DetectNasalBoned(keys="image", weights=str(tmp_path / "detector.pt"), crop_size=32, conf=0.0)({"image": img})
    assert d["box_source"] == "none" and "below the floor 1.01 chosen on validation" in d["not_assessable"]
    assert d["detector_confidence"] == pytest.approx(trusted["detector_confidence"])
