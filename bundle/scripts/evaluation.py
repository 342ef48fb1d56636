"""Honest evaluation of a binary score: operating threshold, patient-level bootstrap CIs, calibration, figures.

Generic: any stage that turns images into a fracture score (classifier C, the G-D-C maps, a baseline)
evaluates through ``evaluation_report.evaluate_binary``. Conventions:

- ``y`` is 0/1 (1 = fracture), ``score`` a probability in [0, 1]; an image is called positive when
  ``score >= threshold``.
- The threshold is chosen on the validation split only (``choose_threshold``) and applied unchanged
  to the test split. Rule ``"youden"``: maximise Youden's J = sensitivity + specificity - 1 over the
  midpoints between consecutive distinct validation scores; ties go to the lower threshold. Rule
  ``"sensitivity"``: the highest such threshold whose validation sensitivity is at least ``target`` (the best
  specificity that reaches it), lowered as far as that specificity holds (more sensitivity for free); rule
  ``"specificity"``: the lowest whose validation specificity is at least ``target``, raised as far as its
  sensitivity holds. On a validation split the network separates, both end at Youden's threshold.
- Calibration step (``fit_temperature``): temperature scaling, p = sigmoid(logit / T), one parameter fitted on the
  validation split by minimising the log loss against Platt's targets ((n+ + 1) / (n+ + 2) for fractures,
  1 / (n- + 2) for normals), so that a validation split the network separates perfectly still gives a finite T.
  Monotonic: ranking, AUC and every threshold's split of the images are unchanged; thresholds are stated on the
  calibrated probability.
- Two operating points (``operating_points``), on the calibrated validation probabilities: ``suspicious`` (rule
  ``"sensitivity"``) and ``fracture`` (rule ``"specificity"``); ``finding`` names an image's side of them.
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


def _check_target(rule: str, name: str, target: float | None) -> float:
    if target is None or not 0 < target <= 1:
        raise ValueError(f"threshold rule '{rule}' needs {name} in (0, 1], got {target}")
    return float(target)


def choose_threshold(
    y: Sequence[int],
    score: Sequence[float],
    rule: str = "youden",
    target_sensitivity: float | None = None,
    target_specificity: float | None = None,
) -> tuple[float, dict]:
    """Pick the operating threshold on validation data; return ``(threshold, figures at it)``.

    ``rule="youden"``: maximise sensitivity + specificity - 1, ties to the lower threshold.
    ``rule="sensitivity"``: the best specificity with sensitivity >= ``target_sensitivity``; of the thresholds that
    give it, the lowest (the best sensitivity).
    ``rule="specificity"``: the best sensitivity with specificity >= ``target_specificity``; of the thresholds that
    give it, the highest (the best specificity).
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
        ok = sens >= _check_target(rule, "target_sensitivity", target_sensitivity) - 1e-12
        i = int(np.flatnonzero(ok & (spec >= spec[ok].max() - 1e-12))[0])  # thresholds ascend: the lowest of the best
    elif rule == "specificity":
        ok = spec >= _check_target(rule, "target_specificity", target_specificity) - 1e-12
        i = int(np.flatnonzero(ok & (sens >= sens[ok].max() - 1e-12))[-1])  # the highest of the best
    else:
        raise ValueError(f"threshold rule must be 'youden', 'sensitivity' or 'specificity', got '{rule}'")
    t = float(thresholds[i])
    info = {
        "rule": rule,
        "target_sensitivity": target_sensitivity,
        **({"target_specificity": target_specificity} if rule == "specificity" else {}),
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


def sigmoid(logit: Sequence[float] | float, temperature: float = 1.0) -> np.ndarray:
    """The (temperature-scaled) probability ``sigmoid(logit / temperature)``, via ``torch.sigmoid``."""
    return torch.sigmoid(torch.as_tensor(np.asarray(logit, dtype=np.float64)) / float(temperature)).numpy()


def fit_temperature(y: Sequence[int], logit: Sequence[float], bounds: tuple[float, float] = (0.05, 20.0)) -> dict:
    """Temperature scaling fitted on ``(y, logit)`` (the validation split): ``{"temperature", "nll_before",
    "nll_after", "ece_before", "ece_after", "at_bound"}`` (log loss and ECE against the true labels).

    T minimises the mean binary cross-entropy (``torch``'s, with logits) of ``logit / T`` against Platt's targets
    ((n+ + 1) / (n+ + 2) for y = 1, 1 / (n- + 2) for y = 0): with hard 0/1 targets a split the network separates
    perfectly would drive T to 0. The loss is convex in 1 / T, so a bounded one-dimensional search (scipy's
    ``minimize_scalar``) over 1 / T in ``[1 / bounds[1], 1 / bounds[0]]`` finds its minimum; ``at_bound`` says T
    ended on a bound (e.g. a network whose logits do not depend on the image).
    """
    from scipy.optimize import minimize_scalar

    y_arr = np.asarray(y, dtype=np.float64)
    z = torch.as_tensor(np.asarray(logit, dtype=np.float64))
    if y_arr.size == 0 or y_arr.min() == y_arr.max():
        raise ValueError("fitting a temperature needs both classes in the validation labels")
    n_pos, n_neg = y_arr.sum(), (1 - y_arr).sum()
    target = torch.as_tensor(np.where(y_arr > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2)))

    def loss(inverse_t: float) -> float:
        return float(torch.nn.functional.binary_cross_entropy_with_logits(z * inverse_t, target))

    low, high = 1 / bounds[1], 1 / bounds[0]
    inverse_t = float(minimize_scalar(loss, bounds=(low, high), method="bounded", options={"xatol": 1e-6}).x)
    return {
        **temperature_figures(y_arr, z.numpy(), 1 / inverse_t),
        "at_bound": bool(min(inverse_t - low, high - inverse_t) < 1e-4 * high),
    }


def temperature_figures(y: Sequence[int], logit: Sequence[float], temperature: float) -> dict:
    """``temperature`` with the log loss (hard 0/1 labels) and ECE of ``(y, logit)`` before and after it."""
    y_t = torch.as_tensor(np.asarray(y, dtype=np.float64))
    z = torch.as_tensor(np.asarray(logit, dtype=np.float64))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    return {
        "temperature": float(temperature),
        "nll_before": float(bce(z, y_t)),
        "nll_after": float(bce(z / temperature, y_t)),
        "ece_before": calibration(y, sigmoid(z, 1.0))["ece"],
        "ece_after": calibration(y, sigmoid(z, temperature))["ece"],
    }


# ----------------------------------------------------------------------------------------------
# Two operating points and the finding they give
# ----------------------------------------------------------------------------------------------

FINDINGS = ("fracture", "suspicious", "no fracture", "not assessable")


def operating_points(
    y: Sequence[int], probability: Sequence[float], suspicious_sensitivity: float, fracture_specificity: float
) -> dict[str, dict]:
    """``suspicious`` (rule ``"sensitivity"``: the best specificity with sensitivity >= ``suspicious_sensitivity``)
    and ``fracture`` (rule ``"specificity"``: the best sensitivity with specificity >= ``fracture_specificity``) on
    validation ``probability``; each ``{"threshold", "target", "validation": figures}``.

    Where the two targets overlap (the suspicious threshold above the fracture one), ``suspicious`` is lowered to
    ``fracture``'s threshold, where its sensitivity is at least as high: the suspicious band is then empty.
    """
    t_s, v_s = choose_threshold(y, probability, "sensitivity", target_sensitivity=suspicious_sensitivity)
    t_f, v_f = choose_threshold(y, probability, "specificity", target_specificity=fracture_specificity)
    if t_s > t_f:
        logger.info("suspicious threshold %.4f above the fracture threshold %.4f: lowered to it", t_s, t_f)
        t_s, v_s = t_f, {**v_s, **binary_metrics(y, probability, t_f), **confusion(y, probability, t_f)}
    drop = ("rule", "target_sensitivity", "target_specificity", "threshold", "youden_j")
    return {
        "suspicious": {
            "threshold": t_s,
            "target": {"sensitivity": float(suspicious_sensitivity)},
            "validation": {k: v for k, v in v_s.items() if k not in drop},
        },
        "fracture": {
            "threshold": t_f,
            "target": {"specificity": float(fracture_specificity)},
            "validation": {k: v for k, v in v_f.items() if k not in drop},
        },
    }


def finding(probability: float | None, thresholds: dict[str, float]) -> str:
    """``"fracture"`` at or above ``thresholds["fracture"]``, ``"suspicious"`` at or above ``thresholds["suspicious"]``,
    else ``"no fracture"``; ``"not assessable"`` without a probability (no nasal bone found)."""
    if probability is None:
        return "not assessable"
    if probability >= thresholds["fracture"]:
        return "fracture"
    return "suspicious" if probability >= thresholds["suspicious"] else "no fracture"


def finding_counts(y: Sequence[int], probability: Sequence[float], thresholds: dict[str, float]) -> dict[str, dict]:
    """How many fractures and normals each finding holds: ``{finding: {"fractures": n, "normals": n}}``."""
    found = [finding(float(p), thresholds) for p in probability]
    labels = np.asarray(y).astype(int)
    return {
        name: {
            "fractures": int(sum(f == name and v == 1 for f, v in zip(found, labels, strict=True))),
            "normals": int(sum(f == name and v == 0 for f, v in zip(found, labels, strict=True))),
        }
        for name in FINDINGS[:3]
    }


def stored_calibration(info: dict) -> dict:
    """``{"temperature", "thresholds": {"suspicious", "fracture"}, "calibrated"}`` of a ``classifier.pt``'s info.

    Weights written before the calibration step have neither: temperature 1 and both operating points at the
    main ``threshold`` (``calibrated`` False; the caller warns).
    """
    cal, points = info.get("calibration"), info.get("operating_points")
    if not cal or not points:
        t = float(info["threshold"])
        return {"temperature": 1.0, "thresholds": {"suspicious": t, "fracture": t}, "calibrated": False}
    return {
        "temperature": float(cal["temperature"]),
        "thresholds": {k: float(points[k]["threshold"]) for k in ("suspicious", "fracture")},
        "calibrated": True,
    }


# ----------------------------------------------------------------------------------------------
# Collecting an engine's outputs
# ----------------------------------------------------------------------------------------------


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
