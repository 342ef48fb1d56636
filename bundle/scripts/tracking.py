"""MLflow bookkeeping for the pipeline: one parent run, a nested run per stage.

Stage configs log through MONAI's ``MLFlowHandler`` with ``run_name: @mlflow_run_name``; the handler
reuses the newest unfinished run of that name, so the pipeline creates each stage's run first (as a
child of the pipeline run) and hands its name to the stage.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def default_tracking_uri(output_dir: str | Path) -> str:
    """The embedded store: a sqlite database inside the output folder."""
    return "sqlite:///" + str(Path(output_dir).resolve() / "mlflow.db")


def artifact_location(tracking_uri: str, output_dir: str | Path) -> str | None:
    """Local stores keep artifacts beside the database; a tracking server chooses its own."""
    return None if tracking_uri.startswith(("http://", "https://")) else str(Path(output_dir).resolve() / "mlruns")


class Tracker:
    """A thin wrapper over ``MlflowClient`` for the pipeline's runs (no global MLflow state)."""

    def __init__(self, tracking_uri: str, experiment_name: str, output_dir: str | Path) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        exp = self.client.get_experiment_by_name(experiment_name)
        self.experiment_id = (
            exp.experiment_id
            if exp
            else self.client.create_experiment(
                experiment_name, artifact_location=artifact_location(tracking_uri, output_dir)
            )
        )

    def start(self, run_name: str, parent_id: str | None = None, tags: dict | None = None) -> str:
        """Create a run (nested under ``parent_id`` if given) and return its id."""
        tags = dict(tags or {})
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        return self.client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id

    def params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log flattened params (MLflow keeps 6000 characters a value)."""
        for key, value in _flatten(params).items():
            self.client.log_param(run_id, key[:250], str(value)[:6000])

    def metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        """Log every finite number of a (nested) dict as a metric."""
        for key, value in _flatten(metrics).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
                self.client.log_metric(run_id, key[:250], float(value), step=step)

    def artifact(self, run_id: str, path: str | Path, folder: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), folder)
        elif path.is_file():
            self.client.log_artifact(run_id, str(path), folder)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def run_name(stage: str) -> str:
    """A unique, readable run name."""
    return f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"


def read_json(path: str | Path) -> dict:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


class MlflowRun:
    """The newest unfinished run named ``run_name`` in ``experiment_name`` (created if missing)."""

    def __init__(
        self, tracking_uri: str | None, experiment_name: str, run_name: str, artifact_location: str | None = None
    ):
        self.client = None
        if not tracking_uri:
            return
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment_name)
        if exp is None:
            location = artifact_location
            if location is None and tracking_uri.startswith("sqlite:///"):  # never ./mlruns in the working directory
                location = str(Path(tracking_uri[len("sqlite:///") :]).parent.resolve() / "mlruns")
            exp_id = self.client.create_experiment(experiment_name, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        runs = self.client.search_runs(
            [exp_id], filter_string=f"attributes.run_name = '{run_name}'", order_by=["attributes.start_time DESC"]
        )
        open_runs = [r for r in runs if r.info.status in ("RUNNING", "SCHEDULED")]
        self.owned = not open_runs
        run = open_runs[0] if open_runs else self.client.create_run(exp_id, run_name=run_name)
        self.run_id = run.info.run_id

    def log_params(self, params: dict) -> None:
        if self.client:
            existing = self.client.get_run(self.run_id).data.params
            for k, v in params.items():
                if k not in existing:
                    self.client.log_param(self.run_id, k, str(v)[:500])

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if self.client:
            for k, v in metrics.items():
                if v is not None and math.isfinite(float(v)):
                    self.client.log_metric(self.run_id, k.replace("(", "").replace(")", ""), float(v), step=step)

    def close(self, status: str = "FINISHED") -> None:
        if self.client and self.owned:
            self.client.set_terminated(self.run_id, status)

    def log_artifact(self, path: str | Path) -> None:
        if self.client:
            self.client.log_artifact(self.run_id, str(path))
