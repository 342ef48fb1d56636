"""Honest evaluation of a binary score: operating threshold, patient-level bootstrap CIs, calibration, figures.

Generic: any stage that turns images into a fracture score (classifier C, the G-D-C maps, a baseline)
evaluates through ``evaluation_report.evaluate_binary``. Conventions:

- ``y`` is 0/1 (1 = fracture), ``score`` a probability in [0, 1]; an image is called positive when
  ``score >= threshold``.
- The threshold is chosen on the validation split only (``choose_threshold``) and applied unchanged
  to the test split. Rule ``"youden"``: maximise Youden's J = sensitivity + specificity - 1 over the
  midpoints between consecutive distinct validation scores; ties go to the lower threshold. Rule
  ``"sensitivity"``: the highest such threshold whose validation sensitivity is at least ``target``.
- Confidence intervals come from a patient-level bootstrap: each resample draws patients with
  replacement (as many as there are) and takes all of their images, so the two views of one patient
  never count as independent evidence. 95% percentile intervals, ``n_resamples=2000``, seeded.
- Calibration: reliability diagram over equal-width probability bins, Brier score and expected
  calibration error (ECE, bin-weighted mean |observed rate - mean predicted|).
- Per group (``metrics_by_group``, e.g. per file format): the same figures at the same threshold, no CIs; a
  figure undefined in a group (AUC with one class) is None.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.metrics import compute_roc_auc

logger = logging.getLogger(__name__)
Metric = Callable[[np.ndarray, np.ndarray], float]


# ----------------------------------------------------------------------------------------------
# Metrics on one set
# ----------------------------------------------------------------------------------------------


def roc_auc(y: Sequence[int], score: Sequence[float]) -> float:
    """Area under the ROC curve (MONAI ``compute_roc_auc``, ties count one half); NaN if only one class is present."""
    y_t = torch.as_tensor(np.asarray(y, dtype=np.float64))
    if y_t.numel() == 0 or bool((y_t == y_t[0]).all()):  # checked here: MONAI would warn on every bootstrap resample
        return float("nan")
    return float(compute_roc_auc(torch.as_tensor(np.asarray(score, dtype=np.float64)), y_t))


def confusion(y: Sequence[int], score: Sequence[float], threshold: float) -> dict[str, int]:
    """Counts ``tp, fn, tn, fp`` of ``score >= threshold`` against ``y``."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(score, dtype=np.float64) >= threshold
    return {
        "tp": int((pred & y).sum()),
        "fn": int((~pred & y).sum()),
        "tn": int((~pred & ~y).sum()),
        "fp": int((pred & ~y).sum()),
    }


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def binary_metrics(y: Sequence[int], score: Sequence[float], threshold: float) -> dict[str, float]:
    """ROC AUC, accuracy, sensitivity, specificity (at ``threshold``) and the Brier score."""
    c = confusion(y, score, threshold)
    n = sum(c.values())
    y_arr, s_arr = np.asarray(y, dtype=np.float64), np.asarray(score, dtype=np.float64)
    return {
        "roc_auc": roc_auc(y, score),
        "accuracy": _ratio(c["tp"] + c["tn"], n),
        "sensitivity": _ratio(c["tp"], c["tp"] + c["fn"]),
        "specificity": _ratio(c["tn"], c["tn"] + c["fp"]),
        "brier": float(np.mean((s_arr - y_arr) ** 2)) if n else float("nan"),
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def metrics_by_group(
    y: Sequence[int], score: Sequence[float], groups: Sequence[str], threshold: float
) -> dict[str, dict]:
    """Per group (e.g. file format), in name order: ``n_images``, ``n_fractures``, ``roc_auc``, ``accuracy``,
    ``sensitivity`` and ``specificity`` at ``threshold``; a figure that is undefined in a group (the AUC of a group
    with one class, the sensitivity of a group without fractures) is None (JSON null)."""
    y_arr, s_arr, g_arr = np.asarray(y).astype(int), np.asarray(score, dtype=np.float64), np.asarray(groups, str)
    if not len(y_arr) == len(s_arr) == len(g_arr):
        raise ValueError(f"y, score and groups differ in length ({len(y_arr)}, {len(s_arr)}, {len(g_arr)})")
    out = {}
    for name in sorted(set(g_arr.tolist())):
        sel = g_arr == name
        m = binary_metrics(y_arr[sel], s_arr[sel], threshold)
        out[name] = {
            "n_images": int(sel.sum()),
            "n_fractures": int(y_arr[sel].sum()),
            **{k: _finite_or_none(m[k]) for k in ("roc_auc", "accuracy", "sensitivity", "specificity")},
        }
    return out


def confusion_sentence(counts: dict[str, int], positive: str = "fractures", negative: str = "normals") -> str:
    """The thesis's form: ``"75 of 84 fractures, 81 of 84 normals called correctly"``."""
    return (
        f"{counts['tp']} of {counts['tp'] + counts['fn']} {positive}, "
        f"{counts['tn']} of {counts['tn'] + counts['fp']} {negative} called correctly"
    )


# ----------------------------------------------------------------------------------------------
# Threshold (validation split only)
# ----------------------------------------------------------------------------------------------


def candidate_thresholds(score: Sequence[float]) -> np.ndarray:
    """Midpoints between consecutive distinct scores, plus one at or below the lowest and one above the highest.

    For probabilities the end points stay in [0, 1]: half-way to 0 (or 0) below, half-way to 1 above (or just
    above 1 when the highest score is exactly 1).
    """
    s = np.unique(np.asarray(score, dtype=np.float64))
    if s.size == 0:
        return np.array([0.5])
    mids = (s[:-1] + s[1:]) / 2
    low = s[0] / 2 if 0.0 <= s[0] <= 1.0 else s[0] - 1e-6
    high = (s[-1] + 1.0) / 2 if 0.0 <= s[-1] < 1.0 else np.nextafter(s[-1], np.inf)
    return np.concatenate([[low], mids, [high]])


def choose_threshold(
    y: Sequence[int], score: Sequence[float], rule: str = "youden", target_sensitivity: float | None = None
) -> tuple[float, dict]:
    """Pick the operating threshold on validation data; return ``(threshold, figures at it)``.

    ``rule="youden"``: maximise sensitivity + specificity - 1, ties to the lower threshold.
    ``rule="sensitivity"``: the highest threshold with sensitivity >= ``target_sensitivity``.
    """
    y = np.asarray(y).astype(int)
    if y.min() == y.max():
        raise ValueError("choosing a threshold needs both classes in the validation labels")
    thresholds = candidate_thresholds(score)
    stats = [binary_metrics(y, score, t) for t in thresholds]
    sens = np.array([m["sensitivity"] for m in stats])
    spec = np.array([m["specificity"] for m in stats])
    if rule == "youden":
        j = sens + spec - 1
        i = int(np.flatnonzero(j >= j.max() - 1e-12)[0])  # thresholds ascend: the first is the lowest
    elif rule == "sensitivity":
        if target_sensitivity is None or not 0 < target_sensitivity <= 1:
            raise ValueError(f"rule 'sensitivity' needs target_sensitivity in (0, 1], got {target_sensitivity}")
        ok = np.flatnonzero(sens >= target_sensitivity - 1e-12)
        i = int(ok[-1])  # the highest threshold that still reaches the target: the best specificity
    else:
        raise ValueError(f"threshold rule must be 'youden' or 'sensitivity', got '{rule}'")
    t = float(thresholds[i])
    info = {
        "rule": rule,
        "target_sensitivity": target_sensitivity,
        "threshold": t,
        "youden_j": float(sens[i] + spec[i] - 1),
        **binary_metrics(y, score, t),
        **confusion(y, score, t),
    }
    return t, info


# ----------------------------------------------------------------------------------------------
# Patient-level bootstrap
# ----------------------------------------------------------------------------------------------


def patient_bootstrap_indices(patient_ids: Sequence, n_resamples: int = 2000, seed: int = 0):
    """Yield ``n_resamples`` index arrays: patients drawn with replacement, each bringing all of its images."""
    ids = np.asarray([str(p) for p in patient_ids])
    patients, inverse = np.unique(ids, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(patients))]
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(patients), size=len(patients))
        yield np.concatenate([members[k] for k in drawn])


def bootstrap_ci(
    y: Sequence[int],
    score: Sequence[float],
    patient_ids: Sequence,
    threshold: float,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict]:
    """Point value and percentile CI of every ``binary_metrics`` figure, resampling patients.

    Resamples where a figure is undefined (e.g. no fracture drawn) are left out of that figure's
    interval and counted in ``n_undefined``.
    """
    y_arr, s_arr = np.asarray(y).astype(int), np.asarray(score, dtype=np.float64)
    point = binary_metrics(y_arr, s_arr, threshold)
    draws: dict[str, list[float]] = {k: [] for k in point}
    for idx in patient_bootstrap_indices(patient_ids, n_resamples, seed):
        for k, v in binary_metrics(y_arr[idx], s_arr[idx], threshold).items():
            draws[k].append(v)
    alpha = (1 - level) / 2
    out = {}
    for k, v in draws.items():
        vals = np.asarray(v, dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        lo, hi = np.quantile(finite, [alpha, 1 - alpha]) if finite.size else (np.nan, np.nan)
        out[k] = {
            "value": point[k],
            "ci_low": float(lo),
            "ci_high": float(hi),
            "n_undefined": int(vals.size - finite.size),
        }
    return out


# ----------------------------------------------------------------------------------------------
# Calibration (its figure and the ROC's: evaluation_report.py)
# ----------------------------------------------------------------------------------------------


def calibration(y: Sequence[int], score: Sequence[float], n_bins: int = 10) -> dict:
    """Reliability table over ``n_bins`` equal-width bins, Brier score and ECE."""
    y_arr, s_arr = np.asarray(y, dtype=np.float64), np.clip(np.asarray(score, dtype=np.float64), 0, 1)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(s_arr, edges[1:-1]), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        sel = which == b
        n = int(sel.sum())
        mean_pred = float(s_arr[sel].mean()) if n else float("nan")
        rate = float(y_arr[sel].mean()) if n else float("nan")
        if n:
            ece += n / len(s_arr) * abs(rate - mean_pred)
        bins.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": n,
                "mean_predicted": mean_pred,
                "observed_rate": rate,
            }
        )
    return {"brier": float(np.mean((s_arr - y_arr) ** 2)), "ece": float(ece), "n_bins": n_bins, "bins": bins}


class OutputCollector:
    """Ignite handler gathering ``keys`` of every decollated item of a MONAI engine over one run.

    A key is read from the item's output (``pred``, ``label``...) or else from its input batch (other data
    keys such as ``patient_id``, which MONAI engines do not copy into the output). ``collector.data["pred"]``
    is a list with one entry per item (tensors become Python scalars or lists); it is reset when the engine starts.
    """

    def __init__(self, keys: Sequence[str] = ("pred", "label", "patient_id")) -> None:
        self.keys = tuple(keys)
        self.data: dict[str, list] = {k: [] for k in self.keys}

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def reset(self, _engine=None) -> None:
        self.data = {k: [] for k in self.keys}

    def __call__(self, engine) -> None:
        output, batch = engine.state.output, engine.state.batch
        items = output if isinstance(output, list) else [output]
        inputs = batch if isinstance(batch, list) else [batch] * len(items)
        for item, data in zip(items, inputs, strict=True):
            for k in self.keys:
                v = item[k] if k in item else data[k]
                if hasattr(v, "detach"):
                    v = v.detach().cpu()
                    v = v.item() if v.numel() == 1 else v.tolist()
                self.data[k].append(v)
