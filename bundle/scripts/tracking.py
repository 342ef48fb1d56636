"""MLflow bookkeeping around MONAI's ``MLFlowHandler``: the pipeline's parent run and nested stage runs.

Stages log through the ``MLFlowHandler`` that MONAI's ``--tracking mlflow`` adds to their engines, with the
config's ``tracking_uri``, ``experiment_name`` and ``run_name``; the handler reuses the unfinished run of that
name, so the pipeline creates each stage's run first (as a child of the pipeline run) and hands its name to the
stage. What is not an engine (the localisation table, the inference summary) logs through ``Tracker``.
"""

from __future__ import annotations

import json
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

    def __init__(self, tracking_uri: str, experiment_name: str, output_dir: str | Path | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        if output_dir is None and tracking_uri.startswith("sqlite:///"):  # artifacts beside the database
            output_dir = Path(tracking_uri[len("sqlite:///") :]).parent
        exp = self.client.get_experiment_by_name(experiment_name)
        self.experiment_id = (
            exp.experiment_id
            if exp
            else self.client.create_experiment(
                experiment_name,
                artifact_location=artifact_location(tracking_uri, output_dir) if output_dir is not None else None,
            )
        )

    def open_or_start(self, run_name: str) -> tuple[str, bool]:
        """The unfinished run named ``run_name`` (as ``MLFlowHandler`` finds it), else a new one; and whether the
        caller started it (and so should end it)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"attributes.run_name = '{run_name}'",
            order_by=["attributes.start_time DESC"],
        )
        open_runs = [r for r in runs if r.info.status in ("RUNNING", "SCHEDULED")]
        if open_runs:
            return open_runs[0].info.run_id, False
        return self.start(run_name), True

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
