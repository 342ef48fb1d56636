"""Figures of ``evaluation.evaluate_binary``: the ROC curve with its operating point, and the reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .evaluation import binary_metrics, calibration


def roc_curve(y: Sequence[int], score: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates over every threshold (descending), starting at (0, 0)."""
    y = np.asarray(y).astype(bool)
    thresholds = np.concatenate([[np.inf], np.unique(np.asarray(score, dtype=np.float64))[::-1]])
    s = np.asarray(score, dtype=np.float64)
    tpr = np.array([(s[y] >= t).mean() for t in thresholds])
    fpr = np.array([(s[~y] >= t).mean() for t in thresholds])
    return fpr, tpr, thresholds


def plot_roc(path: str | Path, y, score, threshold: float, ci: dict | None = None, title: str = "ROC") -> Path:
    """ROC curve PNG with the AUC (and CI) in the legend and the operating point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(y, score)
    m = binary_metrics(y, score, threshold)
    auc_txt = f"AUC {m['roc_auc']:.3f}"
    if ci and "roc_auc" in ci:
        auc_txt += f" (95% CI {ci['roc_auc']['ci_low']:.3f}-{ci['roc_auc']['ci_high']:.3f})"
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    ax.step(fpr, tpr, where="post", lw=2, label=auc_txt)
    ax.plot(
        1 - m["specificity"],
        m["sensitivity"],
        "o",
        color="C3",
        label=f"threshold {threshold:.3f}: sens {m['sensitivity']:.2f}, spec {m['specificity']:.2f}",
    )
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title=title)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_calibration(path: str | Path, y, score, n_bins: int = 10, title: str = "Calibration") -> Path:
    """Reliability diagram (observed fracture rate per bin vs mean predicted) over a histogram of scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cal = calibration(y, score, n_bins)
    bins = [b for b in cal["bins"] if b["count"]]
    fig, (ax, ax_h) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), dpi=120, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="perfect calibration")
    ax.plot(
        [b["mean_predicted"] for b in bins],
        [b["observed_rate"] for b in bins],
        "o-",
        color="C0",
        label=f"Brier {cal['brier']:.3f}, ECE {cal['ece']:.3f}",
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
