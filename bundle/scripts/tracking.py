"""MLflow bookkeeping around MONAI's ``MLFlowHandler``: the pipeline's parent run and nested stage runs.

Stages log through the ``MLFlowHandler`` that MONAI's ``--tracking mlflow`` adds to their engines, with the
config's ``tracking_uri``, ``experiment_name`` and ``run_name``; the handler reuses the unfinished run of that
name, so the pipeline creates each stage's run first (as a child of the pipeline run) and hands its name to the
stage. What is not an engine (the localisation table, the inference summary) logs through ``Tracker``.

Tracking never stops the work it records. A tracking server that cannot be reached (down from the start or killed
in the middle of a run) is reported once per process with a warning; from then on nothing more is sent to it, and
what would have been logged goes as JSON lines to ``mlflow_offline.jsonl`` in the output folder (metrics, params and
run events; artifacts stay where they are). Requests give up in seconds: ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (10 s),
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (2) and ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (1) default to these values here
instead of MLflow's (120 s, 7 retries, factor 2: minutes per call); set them to override.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monai.handlers import MLFlowHandler

from .imageio import one_line

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
for _name, _value in (
    ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"),
    ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
    ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
):
    os.environ.setdefault(_name, _value)

logger = logging.getLogger(__name__)
OFFLINE_LOG = "mlflow_offline.jsonl"
_unreachable: dict[str, str] = {}  # tracking URI -> why, for this process


def _one_line(err: BaseException) -> str:
    return one_line(f"{type(err).__name__}: {err}" if str(err).strip() else type(err).__name__, limit=300)


def tracking_failed(tracking_uri: str, err: BaseException, offline_log: str | Path | None) -> None:
    """Record that ``tracking_uri`` failed; warn the first time only."""
    if tracking_uri in _unreachable:
        return
    _unreachable[tracking_uri] = _one_line(err)
    kept = f"what it would have logged is kept in {offline_log}" if offline_log else "the run's own files are kept"
    logger.warning(
        "MLflow tracking at %s failed (%s): the work goes on without it; %s",
        tracking_uri,
        _unreachable[tracking_uri],
        kept,
    )


def is_unreachable(tracking_uri: str | None) -> bool:
    """Whether tracking at ``tracking_uri`` already failed in this process."""
    return str(tracking_uri) in _unreachable


def write_offline(offline_log: str | Path | None, record: dict[str, Any]) -> None:
    """Append ``record`` (with a time stamp) as one JSON line to ``offline_log``, if there is one."""
    if not offline_log:
        return
    path = Path(offline_log)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}, default=str) + "\n")
        f.flush()


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in _flatten(metrics).items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def default_tracking_uri(output_dir: str | Path) -> str:
    """The embedded store: a sqlite database inside the output folder."""
    return "sqlite:///" + str(Path(output_dir).resolve() / "mlflow.db")


def artifact_location(tracking_uri: str, output_dir: str | Path) -> str | None:
    """Local stores keep artifacts beside the database; a tracking server chooses its own."""
    return None if tracking_uri.startswith(("http://", "https://")) else str(Path(output_dir).resolve() / "mlruns")


def _guarded(offline: Callable[..., Any] | None = None) -> Callable:
    """Run a ``Tracker`` method unless its URI failed before; on failure warn once and log offline instead.

    ``offline(self, *args, **kwargs)`` is what the method returns (and records) when tracking is unavailable.
    """

    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        def guarded(self: Tracker, *args: Any, **kwargs: Any) -> Any:
            if not is_unreachable(self.tracking_uri):
                try:
                    return method(self, *args, **kwargs)
                except Exception as err:  # an unreachable or failing server must not stop the work
                    tracking_failed(self.tracking_uri, err, self.offline_log)
            return offline(self, *args, **kwargs) if offline else None

        return guarded

    return wrap


class Tracker:
    """A thin wrapper over ``MlflowClient`` for the pipeline's runs (no global MLflow state).

    Every call is guarded: when tracking fails, the run goes on and the call is recorded in ``offline_log``
    (default ``<output_dir>/mlflow_offline.jsonl``; run ids are then ``offline-<run name>``).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        output_dir: str | Path | None = None,
        offline_log: str | Path | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        if output_dir is None and tracking_uri.startswith("sqlite:///"):  # artifacts beside the database
            output_dir = Path(tracking_uri[len("sqlite:///") :]).parent
        self.output_dir = output_dir
        self.offline_log = offline_log or (Path(output_dir) / OFFLINE_LOG if output_dir is not None else None)
        self.client = None
        self.experiment_id = self._experiment()

    @_guarded()
    def _experiment(self) -> str:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(self.tracking_uri)
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp:
            return exp.experiment_id
        location = artifact_location(self.tracking_uri, self.output_dir) if self.output_dir is not None else None
        return self.client.create_experiment(self.experiment_name, artifact_location=location)

    def _offline(self, event: str, run_id: str, **record: Any) -> None:
        write_offline(self.offline_log, {"event": event, "run": run_id, **record})

    def _offline_start(self, run_name: str, parent_id: str | None = None, tags: dict | None = None) -> str:
        run_id = f"offline-{run_name}"
        self._offline("start", run_id, parent=parent_id, tags=tags or {})
        return run_id

    @_guarded(lambda self, run_name: (self._offline_start(run_name), True))
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

    @_guarded(_offline_start)
    def start(self, run_name: str, parent_id: str | None = None, tags: dict | None = None) -> str:
        """Create a run (nested under ``parent_id`` if given) and return its id."""
        tags = dict(tags or {})
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        return self.client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id

    @_guarded(lambda self, run_id, params: self._offline("params", run_id, params=_flatten(params)))
    def params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log flattened params (MLflow keeps 6000 characters a value)."""
        for key, value in _flatten(params).items():
            self.client.log_param(run_id, key[:250], str(value)[:6000])

    @_guarded(
        lambda self, run_id, metrics, step=0: self._offline("metrics", run_id, step=step, metrics=_scalars(metrics))
    )
    def metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        """Log every finite number of a (nested) dict as a metric."""
        for key, value in _flatten(metrics).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
                self.client.log_metric(run_id, key[:250], float(value), step=step)

    @_guarded(lambda self, run_id, path, folder=None: self._offline("artifact", run_id, path=str(path)))
    def artifact(self, run_id: str, path: str | Path, folder: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), folder)
        elif path.is_file():
            self.client.log_artifact(run_id, str(path), folder)

    @_guarded(lambda self, run_id, status="FINISHED": self._offline("end", run_id, status=status))
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


class ResilientMLFlowHandler(MLFlowHandler):
    """MONAI's ``MLFlowHandler`` that never stops the engine: when tracking fails it warns once (per process and
    URI), stops sending, and appends each epoch's metrics to ``offline_log`` instead.

    ``train_all`` uses it in place of ``MLFlowHandler`` for ``--tracking`` (``scripts.pipeline.tracking_settings``).
    """

    def __init__(self, *args: Any, offline_log: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.offline_log = offline_log
        self.uri = str(kwargs.get("tracking_uri") or self.client.tracking_uri)

    def _guard(self, what: str, call: Callable[[], Any], engine: Any = None) -> None:
        if not is_unreachable(self.uri):
            try:
                call()
                return
            except Exception as err:  # an unreachable or failing server must not stop training or inference
                tracking_failed(self.uri, err, self.offline_log)
        if what == "epoch" and engine is not None:
            write_offline(
                self.offline_log,
                {
                    "event": "metrics",
                    "run": self.run_name,
                    "engine": type(engine).__name__,
                    "epoch": engine.state.epoch,
                    "metrics": _scalars(dict(engine.state.metrics)),
                },
            )

    def start(self, engine: Any) -> None:
        self._guard("start", lambda: super(ResilientMLFlowHandler, self).start(engine))

    def epoch_completed(self, engine: Any) -> None:
        self._guard("epoch", lambda: super(ResilientMLFlowHandler, self).epoch_completed(engine), engine)

    def iteration_completed(self, engine: Any) -> None:
        self._guard("iteration", lambda: super(ResilientMLFlowHandler, self).iteration_completed(engine))

    def complete(self) -> None:
        self._guard("complete", lambda: super(ResilientMLFlowHandler, self).complete())

    def close(self) -> None:
        self._guard("close", lambda: super(ResilientMLFlowHandler, self).close())
