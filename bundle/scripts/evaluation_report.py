"""The evaluation report of a binary classifier: ``evaluate_binary`` writes the metrics (``evaluation.py``) with
patient-bootstrap CIs as JSON, the ROC curve with its operating points and the reliability diagram (before and after
the calibration step, when given both); ``add_format_breakdown`` adds the same figures per file format of the source
images (``by_format``)."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .evaluation import (
    binary_metrics,
    bootstrap_ci,
    calibration,
    confusion,
    confusion_sentence,
    metrics_by_group,
    sigmoid,
)
from .file_formats import file_format

logger = logging.getLogger(__name__)


def roc_curve(y: Sequence[int], score: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates over every threshold (descending), starting at (0, 0)."""
    y = np.asarray(y).astype(bool)
    thresholds = np.concatenate([[np.inf], np.unique(np.asarray(score, dtype=np.float64))[::-1]])
    s = np.asarray(score, dtype=np.float64)
    tpr = np.array([(s[y] >= t).mean() for t in thresholds])
    fpr = np.array([(s[~y] >= t).mean() for t in thresholds])
    return fpr, tpr, thresholds


def _marked_points(threshold: float, points: dict[str, float] | None) -> list[tuple[str, float]]:
    """The main threshold (``main``) and the named ``points``, those at the same threshold merged into one label."""
    merged: dict[float, list[str]] = {}
    for name, t in [("main", float(threshold)), *((k, float(v)) for k, v in (points or {}).items())]:
        same = next((k for k in merged if abs(k - t) < 1e-9), t)
        merged.setdefault(same, []).append(name)
    return [(" = ".join(names), t) for t, names in merged.items()]


def plot_roc(
    path: str | Path,
    y,
    score,
    threshold: float,
    ci: dict | None = None,
    title: str = "ROC",
    points: dict[str, float] | None = None,
) -> Path:
    """ROC curve PNG with the AUC (and CI) in the legend and the main threshold and the named ``points`` (the
    operating points) marked, points at the same threshold as one marker; when every point lies in the top-left
    corner, an inset zooms on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(y, score)
    auc_txt = f"AUC {binary_metrics(y, score, threshold)['roc_auc']:.3f}"
    if ci and "roc_auc" in ci:
        auc_txt += f" (95% CI {ci['roc_auc']['ci_low']:.3f}-{ci['roc_auc']['ci_high']:.3f})"
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    marked = []
    for k, (name, t) in enumerate(_marked_points(threshold, points)):
        p = binary_metrics(y, score, t)
        label = f"{name}: p \u2265 {t:.3f}, sens {p['sensitivity']:.2f}, spec {p['specificity']:.2f}"
        marked.append((1 - p["specificity"], p["sensitivity"], "oDs^v"[k % 5], f"C{3 + k}", label))
    axes = [ax]
    if marked and all(x <= 0.25 and y_ >= 0.75 for x, y_, *_ in marked):
        inset = ax.inset_axes([0.42, 0.36, 0.5, 0.42])
        inset.set(xlim=(-0.01, 0.25), ylim=(0.75, 1.01))
        inset.tick_params(labelsize=6)
        ax.indicate_inset_zoom(inset, edgecolor="0.5")
        axes.append(inset)
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    for a in axes:
        a.step(fpr, tpr, where="post", lw=2, color="C0", label=auc_txt)
        for x, y_, marker, colour, label in marked:
            a.plot(x, y_, marker, ms=7, mfc="none", mew=1.8, color=colour, label=label)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title=title)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_calibration(
    path: str | Path, y, score, n_bins: int = 10, title: str = "Calibration", before: Sequence[float] | None = None
) -> Path:
    """Reliability diagram (observed fracture rate per bin vs mean predicted) over a histogram of scores; with
    ``before`` (the scores before the calibration step) its curve too, dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cal = calibration(y, score, n_bins)
    bins = [b for b in cal["bins"] if b["count"]]
    fig, (ax, ax_h) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), dpi=120, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="perfect calibration")
    if before is not None:
        raw = calibration(y, before, n_bins)
        raw_bins = [b for b in raw["bins"] if b["count"]]
        ax.plot(
            [b["mean_predicted"] for b in raw_bins],
            [b["observed_rate"] for b in raw_bins],
            "s--",
            color="C1",
            mfc="none",
            label=f"before calibration: Brier {raw['brier']:.3f}, ECE {raw['ece']:.3f}",
        )
    ax.plot(
        [b["mean_predicted"] for b in bins],
        [b["observed_rate"] for b in bins],
        "o-",
        color="C0",
        label=f"{'calibrated: ' if before is not None else ''}Brier {cal['brier']:.3f}, ECE {cal['ece']:.3f}",
    )
    for b in bins:
        ax.annotate(
            str(b["count"]),
            (b["mean_predicted"], b["observed_rate"]),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=6,
            color="0.3",
        )
    ax.set(ylabel="observed fracture rate", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title=title)
    ax.legend(loc="upper left", fontsize=7)
    y_arr, s_arr = np.asarray(y).astype(bool), np.asarray(score, dtype=np.float64)
    edges = np.linspace(0, 1, n_bins + 1)
    ax_h.hist([s_arr[~y_arr], s_arr[y_arr]], bins=edges, stacked=True, color=["C2", "C3"], label=["normal", "fracture"])
    ax_h.set(xlabel="predicted fracture probability", ylabel="images")
    ax_h.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


# ----------------------------------------------------------------------------------------------
# Everything at once
# ----------------------------------------------------------------------------------------------


def _write_table(path: Path, rows: list[dict]) -> str:
    """``rows`` (the reliability bins) as a CSV table; returns the file's name."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path.name


def operating_point_figures(
    y: np.ndarray, score: np.ndarray, patient_ids: Sequence, threshold: float, n_resamples: int, seed: int
) -> dict:
    """Sensitivity and specificity at ``threshold`` with their patient-bootstrap CIs, and the confusion counts."""
    ci = bootstrap_ci(y, score, patient_ids, threshold, n_resamples, seed)
    counts = confusion(y, score, threshold)
    return {
        "threshold": float(threshold),
        "sensitivity": ci["sensitivity"],
        "specificity": ci["specificity"],
        "confusion": counts,
        "confusion_text": confusion_sentence(counts),
    }


def evaluate_binary(
    y: Sequence[int],
    score: Sequence[float],
    patient_ids: Sequence,
    threshold: float,
    out_dir: str | Path,
    name: str = "evaluation",
    n_resamples: int = 2000,
    seed: int = 0,
    n_bins: int = 10,
    extra: dict | None = None,
    title: str = "",
    score_before: Sequence[float] | None = None,
    operating_points: dict[str, float] | None = None,
) -> dict:
    """Metrics with patient-bootstrap CIs, confusion, calibration; writes ``<name>.json``, ROC and calibration PNGs
    and the reliability table ``<name>_calibration.csv`` into ``out_dir``.

    ``score_before``: the same images' scores before the calibration step (``score`` is after): their calibration
    as ``calibration_before`` and ``<name>_calibration_before.csv``, their curve on the reliability diagram.
    ``operating_points``: named thresholds (``{"suspicious": t1, "fracture": t2}``), each with its sensitivity and
    specificity (patient-bootstrap CIs, the same resamples as the main threshold's) and confusion counts.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y_arr, s_arr = np.asarray(y).astype(int), np.asarray(score, dtype=np.float64)
    counts = confusion(y_arr, s_arr, threshold)
    ci = bootstrap_ci(y_arr, s_arr, patient_ids, threshold, n_resamples, seed)
    points = {
        k: operating_point_figures(y_arr, s_arr, patient_ids, t, n_resamples, seed)
        for k, t in (operating_points or {}).items()
    }
    cal = calibration(y_arr, s_arr, n_bins)
    roc_png = plot_roc(
        out / f"{name}_roc.png", y_arr, s_arr, threshold, ci, title=f"{title} ROC".strip(), points=operating_points
    )
    cal_png = plot_calibration(
        out / f"{name}_calibration.png", y_arr, s_arr, n_bins, title=f"{title} calibration".strip(), before=score_before
    )
    tables = {"reliability_table": _write_table(out / f"{name}_calibration.csv", cal["bins"])}
    before = {}
    if score_before is not None:
        raw = calibration(y_arr, score_before, n_bins)
        before = {"calibration_before": {k: v for k, v in raw.items() if k != "bins"}}
        tables["reliability_table_before"] = _write_table(out / f"{name}_calibration_before.csv", raw["bins"])
    result = {
        **(extra or {}),
        "threshold": float(threshold),
        "n_images": int(y_arr.size),
        "n_patients": int(len(set(map(str, patient_ids)))),
        "n_fractures": int(y_arr.sum()),
        "n_normals": int((1 - y_arr).sum()),
        "metrics": ci,
        "confusion": counts,
        "confusion_text": confusion_sentence(counts),
        **({"operating_points": points} if points else {}),
        "calibration": {k: v for k, v in cal.items() if k != "bins"},
        **before,
        "bootstrap": {
            "unit": "patient",
            "n_resamples": n_resamples,
            "seed": seed,
            "level": 0.95,
            "interval": "percentile",
        },
        "figures": {"roc": roc_png.name, "calibration": cal_png.name, **tables},
    }
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    logger.info(
        "%s: AUC %.3f, accuracy %.3f; %s",
        name,
        ci["roc_auc"]["value"],
        ci["accuracy"]["value"],
        result["confusion_text"],
    )
    return result


# ----------------------------------------------------------------------------------------------
# Per file format
# ----------------------------------------------------------------------------------------------


def write_by_format_csv(by_format: dict[str, dict], path: str | Path) -> Path:
    """``by_format`` (format -> figures) as a CSV table, one row per format, ``format`` first; None as empty."""
    columns = ["format", *dict.fromkeys(k for row in by_format.values() for k in row)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for name, row in by_format.items():
            writer.writerow({"format": name, **{k: "" if v is None else v for k, v in row.items()}})
    return Path(path)


def _scalar(value) -> float:
    """One collected value (a number or a one-element list) as a float."""
    return float(value[0] if isinstance(value, (list, tuple)) else value)


def add_format_breakdown(
    result: dict, collected: dict[str, list], dataset_dir: str | Path, out_dir: str | Path, name: str = "evaluation"
) -> dict:
    """Add ``by_format`` to ``result`` (``evaluate_binary``'s, at its ``threshold``) and rewrite ``<name>.json``;
    write ``<name>_by_format.csv``.

    ``collected`` holds per-item ``pred`` (probability), ``label`` and ``source_image`` (the image's path relative to
    ``dataset_dir``, as ``crops.csv`` records it); each image is grouped by ``file_formats.file_format``. When
    ``result`` has a ``temperature`` (the calibration step's), the probability is ``sigmoid(logit / temperature)``
    of the collected ``logit``, the scale its threshold is on.
    """
    if "source_image" not in collected:
        raise KeyError("add_format_breakdown needs 'source_image' in the collected outputs (OutputCollector keys)")
    if "temperature" in result:
        if "logit" not in collected:
            raise KeyError("a calibrated result needs 'logit' in the collected outputs (OutputCollector keys)")
        prob = sigmoid([_scalar(z) for z in collected["logit"]], result["temperature"]).tolist()
    else:
        prob = [_scalar(p) for p in collected["pred"]]
    label = [int(round(_scalar(y))) for y in collected["label"]]
    formats = [file_format(Path(dataset_dir) / s) for s in collected["source_image"]]
    out = Path(out_dir)
    result = {**result, "by_format": metrics_by_group(label, prob, formats, result["threshold"])}
    table = write_by_format_csv(result["by_format"], out / f"{name}_by_format.csv")
    result["figures"] = {**result.get("figures", {}), "by_format_table": table.name}
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    logger.info(
        "%s by format: %s",
        name,
        ", ".join(f"{k} accuracy {v['accuracy']:.3f} (n={v['n_images']})" for k, v in result["by_format"].items()),
    )
    return result
