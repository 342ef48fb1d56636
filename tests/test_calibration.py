"""Calibration step and the two operating points: fitted on validation, stored with the weights, read back."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from scripts.evaluation import (
    binary_metrics,
    calibration,
    candidate_thresholds,
    choose_threshold,
    finding,
    finding_counts,
    fit_temperature,
    operating_points,
    sigmoid,
    stored_calibration,
)


def _validation(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from calibrated logits ``z`` (p = sigmoid(z)); returns ``(y, z)``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return y, z


def test_temperature_scaling_undoes_over_confidence_and_lowers_ece() -> None:
    y, z = _validation()
    fitted = fit_temperature(y, 3.0 * z)  # an over-confident network: logits three times too large
    assert fitted["temperature"] == pytest.approx(3.0, rel=0.2) and not fitted["at_bound"]
    assert fitted["ece_after"] < fitted["ece_before"] / 2 and fitted["nll_after"] < fitted["nll_before"]
    # on a new sample from the same network, the stored temperature still lowers the ECE
    y_test, z_test = _validation(seed=1)
    before = calibration(y_test, sigmoid(3.0 * z_test))["ece"]
    after = calibration(y_test, sigmoid(3.0 * z_test, fitted["temperature"]))["ece"]
    assert after < before / 2
    assert fit_temperature(y, 0.5 * z)["temperature"] == pytest.approx(0.5, rel=0.2)  # under-confident: T < 1


def test_temperature_is_monotonic_and_finite_on_separable_or_flat_validation() -> None:
    separated = fit_temperature([0, 0, 0, 1, 1, 1], [-6.0, -5.0, -4.0, 4.0, 5.0, 7.0])
    assert 0.05 < separated["temperature"] < 20 and not separated["at_bound"]  # Platt's targets: no T -> 0
    flat = fit_temperature([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3])  # logits that do not depend on the image
    assert flat["at_bound"]
    z = np.linspace(-5, 5, 21)
    assert np.all(np.diff(sigmoid(z, 2.5)) > 0)  # the ranking, AUC and every threshold's split are unchanged
    with pytest.raises(ValueError, match="both classes"):
        fit_temperature([1, 1], [0.2, 0.3])


def test_operating_points_meet_their_targets_on_validation() -> None:
    y, z = _validation()
    prob = sigmoid(3.0 * z, 3.0)
    points = operating_points(y, prob, suspicious_sensitivity=0.95, fracture_specificity=0.9)
    s, f = points["suspicious"], points["fracture"]
    assert s["threshold"] < f["threshold"]
    assert s["validation"]["sensitivity"] >= 0.95 and f["validation"]["specificity"] >= 0.9
    assert s["target"] == {"sensitivity": 0.95} and f["target"] == {"specificity": 0.9}
    # brute force over every candidate: each point has the best other figure its target allows, and of the thresholds
    # giving it, the one on the safe side (suspicious: the lowest; fracture: the highest)
    grid = [(t, binary_metrics(y, prob, t)) for t in candidate_thresholds(prob)]
    valid_s = [(t, m) for t, m in grid if m["sensitivity"] >= 0.95]
    best_spec = max(m["specificity"] for _, m in valid_s)
    assert s["validation"]["specificity"] == best_spec
    assert s["threshold"] == min(t for t, m in valid_s if m["specificity"] == best_spec)
    valid_f = [(t, m) for t, m in grid if m["specificity"] >= 0.9]
    best_sens = max(m["sensitivity"] for _, m in valid_f)
    assert f["validation"]["sensitivity"] == best_sens
    assert f["threshold"] == max(t for t, m in valid_f if m["sensitivity"] == best_sens)
    # the same images on either side as when chosen on the raw probabilities (temperature scaling is monotonic)
    raw_t, _ = choose_threshold(y, sigmoid(3.0 * z), "sensitivity", target_sensitivity=0.95)
    assert ((prob >= s["threshold"]) == (sigmoid(3.0 * z) >= raw_t)).all()


def test_separated_validation_puts_both_points_at_the_class_boundary() -> None:
    """Targets are floors: where the network separates the classes, neither point spends its error budget."""
    y, prob = [0] * 20 + [1] * 20, np.r_[np.linspace(0.01, 0.4, 20), np.linspace(0.6, 0.99, 20)]
    points = operating_points(y, prob, suspicious_sensitivity=0.9, fracture_specificity=0.9)
    youden, _ = choose_threshold(y, prob, "youden")
    assert points["suspicious"]["threshold"] == points["fracture"]["threshold"] == pytest.approx(youden)
    for point in points.values():
        assert point["validation"]["sensitivity"] == point["validation"]["specificity"] == 1.0


def test_overlapping_targets_give_an_empty_suspicious_band() -> None:
    y = [0, 0, 0, 0, 1, 0, 1, 1, 1, 1]
    prob = [0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9]  # one fracture and one normal swapped
    points = operating_points(y, prob, suspicious_sensitivity=0.5, fracture_specificity=0.5)
    assert points["suspicious"]["threshold"] == points["fracture"]["threshold"]
    assert points["suspicious"]["validation"]["sensitivity"] >= 0.5


def test_finding_and_its_counts() -> None:
    t = {"suspicious": 0.2, "fracture": 0.8}
    assert [finding(p, t) for p in (0.1, 0.2, 0.5, 0.8, 0.99)] == [
        "no fracture",
        "suspicious",
        "suspicious",
        "fracture",
        "fracture",
    ]
    assert finding(None, t) == "not assessable"
    counts = finding_counts([0, 0, 1, 1, 1], [0.1, 0.5, 0.5, 0.9, 0.05], t)
    assert counts == {
        "fracture": {"fractures": 1, "normals": 0},
        "suspicious": {"fractures": 1, "normals": 1},
        "no fracture": {"fractures": 1, "normals": 1},
    }


def test_export_stores_temperature_and_operating_points(tmp_path) -> None:
    """``export_classifier`` on a loader of crops: the weights file carries the calibration and both points."""
    from scripts.classifier import FractureClassifier, load_classifier
    from scripts.classifier_export import export_classifier
    from scripts.inference import classifier_info

    torch.manual_seed(0)
    net = FractureClassifier("convnet", "gray", mean=0.0, std=0.0625, highpass_sigma=0.0)
    images = torch.rand(24, 1, 32, 32)
    images[12:, :, 8:24, 8:24] += 0.5  # something to tell the classes apart by
    loader = [
        {"image": images[i : i + 8], "label": torch.tensor([0] * 8 if i < 12 else [1] * 8), "patient_id": ["p"] * 8}
        for i in (0, 8, 16)
    ]
    loader[1]["label"] = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    (tmp_path / "crops.json").write_text(json.dumps({"size": 32, "box_source": "landmarks"}))
    path = export_classifier(
        net, tmp_path / "none.pt", loader, tmp_path / "c.pt", tmp_path / "crops.csv", "cpu", fracture_specificity=0.9
    )
    _, info = load_classifier(path)
    cal, points = info["calibration"], info["operating_points"]
    assert cal["method"] == "temperature" and cal["fitted_on"] == "validation" and cal["temperature"] > 0
    assert points["suspicious"]["validation"]["sensitivity"] >= 0.95
    assert points["fracture"]["validation"]["specificity"] >= 0.9
    assert points["suspicious"]["threshold"] <= points["fracture"]["threshold"]
    read = classifier_info(path)
    assert read["temperature"] == pytest.approx(cal["temperature"])
    assert read["thresholds"] == {k: pytest.approx(points[k]["threshold"]) for k in ("suspicious", "fracture")}
    # every stored threshold is on the calibrated scale: the main one splits validation as the calibrated scores do
    with torch.no_grad():
        logits = torch.cat([net.eval()(b["image"]) for b in loader]).flatten().numpy()
    labels = np.concatenate([b["label"].numpy() for b in loader])
    calibrated = sigmoid(logits, cal["temperature"])
    assert ((calibrated >= info["threshold"]) & (labels == 1)).sum() == info["validation"]["tp"]
    raw = export_classifier(
        net, tmp_path / "none.pt", loader, tmp_path / "raw.pt", tmp_path / "crops.csv", "cpu", calibration="none"
    )
    assert load_classifier(raw)[1]["calibration"]["temperature"] == 1.0


def test_old_weights_load_with_temperature_one_and_both_points_at_the_threshold(models, caplog) -> None:
    """The ``models`` fixture's classifier.pt predates the calibration step (threshold 0.4 only)."""
    from scripts.inference import classifier_info

    with caplog.at_level(logging.WARNING, logger="nasal.inference"):
        info = classifier_info(models / "classifier.pt")
    assert info["temperature"] == 1.0 and info["thresholds"] == {"suspicious": 0.4, "fracture": 0.4}
    assert info["threshold"] == pytest.approx(0.4)
    (warning,) = [r.getMessage() for r in caplog.records if "calibration" in r.getMessage()]
    assert "\n" not in warning and "classifier.pt" in warning and "retrain" in warning
    assert stored_calibration({"threshold": 0.3})["calibrated"] is False


def test_the_main_threshold_never_contradicts_the_finding() -> None:
    """Youden's threshold can fall outside [suspicious, fracture]; it is moved in, so `fracture` and `finding` agree."""
    import numpy as np

    from scripts.classifier_export import within_operating_points
    from scripts.evaluation import choose_threshold, finding, operating_points, sigmoid

    rng = np.random.default_rng(0)
    moved = 0
    for _ in range(50):
        y = [1] * 40 + [0] * 60
        prob = sigmoid(np.r_[rng.normal(1.5, 1, 40), rng.normal(-1.5, 1, 60)]).tolist()
        t, figures = choose_threshold(y, prob, "youden")
        points = operating_points(y, prob, 0.95, 0.95)
        t2, figures2 = within_operating_points(y, prob, t, figures, points)
        low, high = points["suspicious"]["threshold"], points["fracture"]["threshold"]
        assert low <= t2 <= high and figures2["threshold"] == t2
        moved += t2 != t
        thresholds = {"suspicious": low, "fracture": high}
        for p in np.linspace(0, 1, 201):
            f = finding(float(p), thresholds)
            assert (p >= t2) <= (f in ("fracture", "suspicious")) and (f == "fracture") <= (p >= t2)
    assert moved > 0  # the case happens (13 of 50 splits in a review's simulation)
