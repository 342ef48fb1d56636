"""The run's MLflow side: its store (offline), training curves per stage, the UI command, the report as an artifact.

The pipeline records its tracking URI and parent run in ``pipeline.json``; a local store (``sqlite:///...``) is
read from the run folder's own ``mlflow.db`` so that a copied or moved run folder still works. Per-epoch metrics
(losses, validation metrics, logged at steps 1..n) are plotted against the epoch; per-iteration ones (MONAI's
``train_loss``, step = iteration) are scaled to epochs and drawn as their mean per epoch. A stage trained for one
epoch shows its per-iteration losses over iterations. Points an evaluation logs into the stage's run afterwards (at
its own step 1, or as ``test_*``) are left out.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

logger = logging.getLogger(__name__)
STAGE_TITLES = {
    "detector": "Stage 1: detector (YOLO)",
    "classifier": "Stage 2: classifier C",
    "gd": "Stage 3: G-D",
    "gdc1": "Stage 4: G-D-C step 1",
    "gdc2": "Stage 5: G-D-C step 2",
}


def tracking_uri(run: Path, recorded: str | None) -> str | None:
    """The URI to read the run from: the run folder's ``mlflow.db`` for a local store, else the recorded one."""
    if (run / "mlflow.db").is_file() and (not recorded or recorded.startswith("sqlite:")):
        return "sqlite:///" + str((run / "mlflow.db").resolve())
    return recorded if recorded and recorded.startswith(("http://", "https://")) else None


def public_uri(uri: str) -> str:
    """An http(s) URI without its user name or password."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


def ui_command(run: Path, recorded: str | None) -> tuple[str, str]:
    """How to open the run in the MLflow UI, with relative paths only: (command or address, where to run it)."""
    if recorded and recorded.startswith(("http://", "https://")):
        return public_uri(recorded), "the tracking server the run logged to"
    try:
        rel = Path(os.path.relpath(run.resolve() / "mlflow.db", Path.cwd())).as_posix()
    except ValueError:  # another drive
        rel = "../"
    if rel.startswith("../"):
        return "mlflow ui --backend-store-uri sqlite:///mlflow.db", "in the run folder, with the repository's venv"
    return f".venv/bin/mlflow ui --backend-store-uri sqlite:///{rel}", "from the repository folder"


def client(uri: str | None):
    """An ``MlflowClient`` for ``uri`` (None when there is none)."""
    if not uri:
        return None
    from mlflow.tracking import MlflowClient

    import scripts.tracking  # noqa: F401  (short HTTP timeouts and no telemetry, as the pipeline uses)

    return MlflowClient(uri)


def history(mlflow, run_id: str) -> tuple[dict[str, list[tuple[float, float]]], str]:
    """The training metrics of ``run_id`` as (x, value) series and the unit of x: ``epoch``, or ``iteration`` when
    the stage trained one epoch (its per-iteration series alone); see the module docstring."""
    run = mlflow.get_run(run_id)
    raw = {}
    for key in run.data.metrics:
        if key.startswith(("lr", "test_")) or "." in key or "/" in key or key == "train_seconds":
            continue  # learning rates, and what the evaluation and the pipeline logged once
        raw[key] = rising(sorted(mlflow.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step)))
    # the epochs: the most common length of the series logged at steps 1, 2, ..., n (one per epoch-level metric;
    # a per-iteration loss is one series, and longer)
    lengths = Counter(len(p) for p in raw.values() if [s for s, _ in p] == list(range(1, len(p) + 1)))
    epochs = min(lengths, key=lambda n: (-lengths[n], n)) if lengths else 0
    if epochs <= 1:
        return {k: [(float(s), v) for s, v in p] for k, p in raw.items() if len(p) > 1}, "iteration"
    out = {}
    for key, points in raw.items():
        steps = [s for s, _ in points]
        if max(steps) <= epochs:
            out[key] = [(float(s), v) for s, v in points]
        else:  # per iteration: scaled to epochs, averaged per epoch
            x = np.ceil(np.array(steps) * epochs / max(steps) - 1e-9)
            values = np.array([v for _, v in points])
            out[f"{key} (epoch mean)"] = [(float(e), float(values[x == e].mean())) for e in np.unique(x)]
    return {k: p for k, p in out.items() if len(p) > 1}, "epoch"


def rising(metrics: list) -> list[tuple[int, float]]:
    """(step, value) of the points whose step passes every earlier one: the training's, not those an evaluation
    logged later into the same run at its own step 1."""
    out: list[tuple[int, float]] = []
    for m in metrics:
        if not out or m.step > out[-1][0]:
            out.append((m.step, m.value))
    return out


def is_loss(key: str) -> bool:
    """Losses go to the left panel; validation metrics (``val_`` and not a loss) to the right, on [0, 1]."""
    return not (key.startswith("val_") and "loss" not in key)


def same_as_another(series: dict[str, list[tuple[float, float]]]) -> set[str]:
    """Epoch means (``... (epoch mean)``) equal to a series logged per epoch (a stage logging its loss both ways)."""
    out = set()
    for key, points in series.items():
        for other, ref in series.items():
            if other != key and key.endswith("(epoch mean)") and not other.endswith("(epoch mean)"):
                if len(ref) == len(points) and np.allclose([v for _, v in points], [v for _, v in ref], rtol=1e-3):
                    out.add(key)
    return out


def plot_curves(
    series: dict[str, list[tuple[float, float]]], title: str, unit: str = "epoch"
) -> tuple[bytes, str] | None:
    """Losses (log scale) and validation metrics over ``unit`` (epochs) of one stage: PNG bytes and a caption; None
    without any series."""
    series = {k: v for k, v in series.items() if k not in same_as_another(series)}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    losses = {k: v for k, v in series.items() if is_loss(k)}
    metrics = {k: v for k, v in series.items() if not is_loss(k)}
    panels = [(p, name) for p, name in ((losses, "loss"), (metrics, "validation metric")) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.7 * len(panels), 3.3), dpi=100, squeeze=False)
    for ax, (group, ylabel) in zip(axes[0], panels, strict=True):
        for k, (key, points) in enumerate(sorted(group.items())):
            x, y = zip(*points, strict=True)
            ax.plot(x, y, "-o" if len(x) <= 40 else "-", ms=2.5, lw=1.4, color=f"C{k % 10}", label=key)
        if ylabel == "loss" and all(v > 0 for p in group.values() for _, v in p):
            ax.set_yscale("log")
        if ylabel != "loss":
            ax.set_ylim(-0.02, 1.02)
        ax.set(xlabel=unit, ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    names = tuple(name for _, name in panels)
    what = {("loss",): "Losses", ("validation metric",): "Validation metrics"}.get(
        names, "Losses (left) and validation metrics (right)"
    )
    caption = f"{what} per {unit}{' (one epoch)' if unit == 'iteration' else ''}, as logged to MLflow"
    if any(k.endswith("(epoch mean)") for k in series):
        caption += "; per-iteration losses as their mean per epoch"
    return buf.getvalue(), caption + "."


def training_curves(mlflow, stages: dict) -> dict[str, tuple[bytes, str]]:
    """One curves PNG and its caption per stage trained in this run (``pipeline.json``'s ``stages``)."""
    out = {}
    for name, stage in stages.items():
        if not stage.get("run_id") or mlflow is None:
            continue
        try:
            series, unit = history(mlflow, stage["run_id"])
            png = plot_curves(series, STAGE_TITLES.get(name, name), unit)
        except Exception as err:  # a store that cannot be read costs the curves, not the report
            logger.warning("training curves of %s not read from MLflow: %s", name, err)
            continue
        if png:
            out[name] = png
    return out


def artifact_check(mlflow, run: Path, parent_id: str | None, log_images: bool = False) -> str | None:
    """None when the report can be logged as an artifact of the parent run, else why not.

    A local artifact folder outside the run folder means the run folder was copied or moved: nothing is written
    there (it may hold another run's files). The report shows X-rays and crops, so it goes to a remote store only
    when the run was started with ``log_images`` (as the stages' own pictures do)."""
    if mlflow is None or not parent_id:
        return "no MLflow store found for this run"
    try:
        uri = mlflow.get_run(parent_id).info.artifact_uri
    except Exception as err:  # tracking never stops the work it records
        return f"the pipeline run could not be read ({type(err).__name__})"
    parts = urlsplit(uri)
    local = parts.scheme in ("", "file")
    if local and not Path(parts.path).resolve().is_relative_to(run.resolve()):
        return "its artifact folder lies outside this run folder (the folder was copied or moved)"
    if not local and not log_images:
        return "it shows X-rays and the MLflow store is remote (the run was not started with log_images true)"
    return None


def log_report(mlflow, parent_id: str, report: Path) -> bool:
    """Log ``report`` as an artifact of the parent run; False (and a warning) when that fails."""
    try:
        mlflow.log_artifact(parent_id, str(report))
        return True
    except Exception as err:  # tracking never stops the work it records
        logger.warning("report not logged to MLflow: %s", err)
        return False
