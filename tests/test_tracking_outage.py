"""Training and inference finish when MLflow is unreachable, or killed mid-run: one warning, metrics kept locally."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from scripts import BUNDLE_ROOT, tracking
from scripts.pipeline import train_all
from tests.servers import free_port, start_mlflow_server, stop_process_group

# the classifier alone, on ground-truth crops (no detector needed), without its evaluation
STAGES = [{"name": "classifier", "train": ["crop_training.yaml", "classifier.yaml"], "weights": ["classifier.pt"]}]
STAGE_ARGS = {"crop_source": "landmarks", "split_fractions": [0.6, 0.2, 0.2]}


def _offline_records(out: Path) -> list[dict]:
    path = out / tracking.OFFLINE_LOG
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_unreachable_server_training_finishes_and_keeps_metrics_locally(tiny_dataset, tmp_path, caplog) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tracking._unreachable.clear()
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        summary = train_all(
            STAGES,
            profile="tiny",
            dataset_dir=str(tiny_dataset),
            output_dir=str(tmp_path / "out"),
            models_dir=str(tmp_path / "models"),
            tracking_uri=uri,
            evaluate=False,
            stage_args={**STAGE_ARGS, "classifier#epochs": 2},
        )
    seconds = time.perf_counter() - start
    assert summary["status"] == "FINISHED" and (tmp_path / "models" / "classifier.pt").is_file()
    warnings = [r.getMessage() for r in caplog.records if "MLflow tracking at" in r.getMessage()]
    assert len(warnings) == 1 and uri in warnings[0] and "\n" not in warnings[0], warnings
    records = _offline_records(tmp_path / "out")
    events = {r["event"] for r in records}
    assert {"start", "params", "metrics", "end"} <= events, events
    epochs = [r for r in records if r["event"] == "metrics" and r.get("epoch") and "val_auc" in r["metrics"]]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert seconds < 120, f"an unreachable server cost {seconds:.0f} s"
    tracking._unreachable.clear()


_STAGE_SCRIPT = """
import json, sys
from scripts.pipeline import train_all
stages, stage_args, dataset, out, models, uri = json.loads(sys.argv[1])
summary = train_all(stages, profile="tiny", dataset_dir=dataset, output_dir=out, models_dir=models,
                    tracking_uri=uri, evaluate=False, stage_args=stage_args)
print("STATUS", summary["status"])
"""


def test_server_killed_mid_run_training_finishes(tiny_dataset, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    uri, server = start_mlflow_server(tmp_path / "server")
    out, models = tmp_path / "out", tmp_path / "models"
    args = [STAGES, {**STAGE_ARGS, "classifier#epochs": 40}, str(tiny_dataset), str(out), str(models), uri]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BUNDLE_ROOT), str(BUNDLE_ROOT.parent)])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _STAGE_SCRIPT, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        client, seen, deadline = MlflowClient(uri), [], time.time() + 300
        while not seen and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            experiments = [e.experiment_id for e in client.search_experiments()]
            runs = client.search_runs(experiments) if experiments else []
            seen = [r for r in runs if "val_auc" in r.data.metrics]
        assert seen and proc.poll() is None, "no validation metric reached the server while the stage ran"
        stop_process_group(server, 9)  # the server dies in the middle of the run
        killed = time.time()
        log, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_process_group(server, 9)
    assert proc.returncode == 0 and "STATUS FINISHED" in log, log[-3000:]
    assert log.count("MLflow tracking at") == 1, log[-3000:]
    assert (models / "classifier.pt").is_file()
    after = [r for r in _offline_records(out) if r["event"] == "metrics" and "val_auc" in r.get("metrics", {})]
    assert after and max(r["epoch"] for r in after) == 40  # the epochs after the kill are kept locally
    print(f"finished {time.time() - killed:.1f} s after the server was killed; {len(after)} epochs kept offline")


def test_unreachable_server_inference_finishes(models, inputs, tmp_path, caplog) -> None:
    from scripts.inference import run_inference

    uri = f"http://127.0.0.1:{free_port()}"
    tracking._unreachable.clear()
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        summary = run_inference(inputs, out, models, device="cpu", tracking_uri=uri)
    rows = summary.read_text().strip().splitlines()
    assert len(rows) == 1 + 3 and "error" not in json.loads((out / "xray0.json").read_text())
    warnings = [r.getMessage() for r in caplog.records if "MLflow tracking at" in r.getMessage()]
    assert len(warnings) == 1 and uri in warnings[0]
    kept = [r for r in _offline_records(out) if r["event"] == "metrics"]
    assert kept and kept[0]["metrics"]["images"] == 3
    tracking._unreachable.clear()
