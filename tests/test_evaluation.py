"""Evaluation: metrics on hand-made examples, the validation threshold rules, the patient-level bootstrap, outputs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from scripts.evaluation import (
    OutputCollector,
    binary_metrics,
    bootstrap_ci,
    calibration,
    choose_threshold,
    confusion,
    confusion_sentence,
    metrics_by_group,
    patient_bootstrap_indices,
    roc_auc,
)
from scripts.evaluation_report import evaluate_binary

# 3 normals, 3 fractures; one normal (0.6) scores above one fracture (0.4)
Y = [0, 0, 0, 1, 1, 1]
S = [0.1, 0.2, 0.6, 0.4, 0.7, 0.9]


def test_roc_auc_on_hand_made_examples() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # ties count one half
    assert roc_auc(Y, S) == pytest.approx(8 / 9)  # 8 of the 9 fracture-normal pairs ordered right
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 200), np.round(rng.random(200), 2)  # many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_confusion_and_metrics_at_a_threshold() -> None:
    c = confusion(Y, S, 0.5)
    assert c == {"tp": 2, "fn": 1, "tn": 2, "fp": 1}
    m = binary_metrics(Y, S, 0.5)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 3)
    assert m["brier"] == pytest.approx(np.mean((np.array(S) - np.array(Y)) ** 2))
    assert confusion(Y, S, 0.4)["tp"] == 3  # score >= threshold is positive
    assert confusion_sentence({"tp": 75, "fn": 9, "tn": 81, "fp": 3}) == (
        "75 of 84 fractures, 81 of 84 normals called correctly"
    )


def test_youden_threshold_ties_go_to_the_lower_threshold() -> None:
    # midpoints 0.15, 0.3, 0.5, 0.65, 0.8: J(0.3) = 1 + 2/3 - 1 and J(0.65) = 2/3 + 1 - 1 tie; 0.3 is chosen
    t, info = choose_threshold(Y, S, "youden")
    assert t == pytest.approx(0.3)
    assert info["youden_j"] == pytest.approx(2 / 3)
    assert info["sensitivity"] == 1.0 and info["specificity"] == pytest.approx(2 / 3)
    # perfectly separated scores: the threshold lies between the classes
    t, _ = choose_threshold([0, 0, 1, 1], [0.1, 0.3, 0.7, 0.8])
    assert t == pytest.approx(0.5)


def test_target_sensitivity_threshold_is_the_highest_that_reaches_it() -> None:
    t, info = choose_threshold(Y, S, "sensitivity", target_sensitivity=0.6)
    assert t == pytest.approx(0.65) and info["sensitivity"] == pytest.approx(2 / 3) and info["specificity"] == 1.0
    t, info = choose_threshold(Y, S, "sensitivity", target_sensitivity=1.0)
    assert t == pytest.approx(0.3) and info["sensitivity"] == 1.0
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="target_sensitivity"):
        choose_threshold(Y, S, "sensitivity")


def test_bootstrap_resamples_whole_patients() -> None:
    # patient A has 10 images, the others one or two: every resample holds each drawn patient's images equally often
    patients = ["A"] * 10 + ["B", "C", "C", "D", "E", "E", "F"]
    groups = {p: [i for i, q in enumerate(patients) if q == p] for p in set(patients)}
    sizes = set()
    for idx in patient_bootstrap_indices(patients, n_resamples=300, seed=1):
        counts = np.bincount(idx, minlength=len(patients))
        for members in groups.values():
            assert len(set(counts[members])) == 1  # all of a patient's images, or none
        assert counts.sum() == sum(counts[m[0]] * len(m) for m in groups.values())
        assert sum(counts[m[0]] for m in groups.values()) == len(groups)  # as many draws as patients
        sizes.add(len(idx))
    assert len(sizes) > 3  # the number of images varies with the patients drawn
    first = [i.tolist() for i in patient_bootstrap_indices(patients, 5, seed=7)]
    assert first == [i.tolist() for i in patient_bootstrap_indices(patients, 5, seed=7)]  # seeded


def test_bootstrap_intervals() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(rng.integers(0, 2, 60), 2)  # 60 patients, 2 images each, one label per patient
    s = 0.3 * y + 0.7 * rng.random(120)  # overlapping classes
    patients = np.repeat(np.arange(60), 2)
    ci = bootstrap_ci(y, s, patients, 0.5, n_resamples=300, seed=0)
    for k in ("roc_auc", "accuracy", "sensitivity", "specificity", "brier"):
        assert ci[k]["ci_low"] <= ci[k]["value"] <= ci[k]["ci_high"], k
    assert ci["roc_auc"]["ci_high"] - ci["roc_auc"]["ci_low"] > 0
    perfect = bootstrap_ci([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], ["a", "b", "c", "d"], 0.5, n_resamples=100)
    assert perfect["accuracy"]["ci_low"] == perfect["accuracy"]["ci_high"] == 1.0
    assert perfect["roc_auc"]["n_undefined"] > 0  # resamples with one class only are left out of the AUC interval


def test_calibration_on_hand_made_examples() -> None:
    # bin [0.2, 0.3): 4 images at 0.25 with 1 fracture (calibrated); bin [0.9, 1.0]: 2 images at 0.95, both normal
    y, s = [1, 0, 0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25, 0.95, 0.95]
    cal = calibration(y, s, n_bins=10)
    assert cal["bins"][2]["count"] == 4 and cal["bins"][2]["observed_rate"] == 0.25
    assert cal["ece"] == pytest.approx(2 / 6 * 0.95)
    assert cal["brier"] == pytest.approx((0.75**2 + 3 * 0.25**2 + 2 * 0.95**2) / 6)
    assert calibration([1, 0], [1.0, 0.0])["ece"] == 0.0


def test_evaluate_binary_writes_json_and_figures(tmp_path) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    s = np.clip(0.6 * y + 0.4 * rng.random(40), 0, 1)
    out = evaluate_binary(y, s, np.arange(40) // 2, 0.5, tmp_path, n_resamples=50, extra={"box_source": "landmarks"})
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved == json.loads(json.dumps(out))
    assert saved["box_source"] == "landmarks" and saved["n_patients"] == 20
    assert saved["bootstrap"]["unit"] == "patient" and saved["bootstrap"]["n_resamples"] == 50
    assert "fractures" in saved["confusion_text"] and "brier" in saved["calibration"]
    for name in ("evaluation_roc.png", "evaluation_calibration.png", "evaluation_calibration.csv"):
        assert (tmp_path / name).stat().st_size > 0


def test_output_collector_reads_outputs_and_batch_keys() -> None:
    collector = OutputCollector(keys=("pred", "label", "patient_id"))
    output = [
        {"pred": torch.tensor([0.8]), "label": torch.tensor([1.0])},
        {"pred": torch.tensor([0.1]), "label": torch.tensor([0.0])},
    ]
    batch = [{"patient_id": "P1"}, {"patient_id": "P2"}]
    engine = SimpleNamespace(state=SimpleNamespace(output=output, batch=batch))
    collector(engine)
    assert collector.data["pred"] == pytest.approx([0.8, 0.1])
    assert collector.data["label"] == [1.0, 0.0] and collector.data["patient_id"] == ["P1", "P2"]
    collector.reset()
    assert collector.data["pred"] == []


def test_candidate_thresholds_of_probabilities_stay_in_the_unit_interval() -> None:
    from scripts.evaluation import candidate_thresholds

    assert list(candidate_thresholds([0.2, 0.6])) == [0.1, 0.4, 0.8]
    low, *_, high = candidate_thresholds([0.0, 0.3, 1.0])
    assert low == 0.0 and 1.0 < high < 1.0 + 1e-12  # everything positive / nothing positive
    t, info = choose_threshold([0, 1, 0, 1], [0.0, 0.0, 0.0, 0.0])  # an untrained network: all scores equal
    assert 0.0 <= t <= 1.0 and info["youden_j"] == 0.0


def test_metrics_by_group_of_one_group_are_the_overall_figures() -> None:
    (only,) = metrics_by_group(Y, S, ["png8"] * len(Y), 0.5).values()
    overall = binary_metrics(Y, S, 0.5)
    figures = ("roc_auc", "accuracy", "sensitivity", "specificity")
    assert only == pytest.approx({"n_images": 6, "n_fractures": 3, **{k: overall[k] for k in figures}})


def test_specificity_threshold_is_the_lowest_that_reaches_it() -> None:
    t, info = choose_threshold(Y, S, "specificity", target_specificity=0.6)
    assert t == pytest.approx(0.3) and info["specificity"] == pytest.approx(2 / 3) and info["sensitivity"] == 1.0
    t, info = choose_threshold(Y, S, "specificity", target_specificity=1.0)
    assert t == pytest.approx(0.65) and info["specificity"] == 1.0
    with pytest.raises(ValueError, match="target_specificity"):
        choose_threshold(Y, S, "specificity")


def test_evaluate_binary_reports_calibration_before_after_and_operating_points(tmp_path) -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 60)
    logit = 3.0 * (2.0 * y - 1.0 + rng.normal(0, 1.2, 60))  # over-confident
    raw, calibrated = 1 / (1 + np.exp(-logit)), 1 / (1 + np.exp(-logit / 3.0))
    points = {"suspicious": 0.2, "fracture": 0.8}
    out = evaluate_binary(
        y, calibrated, np.arange(60) // 2, 0.5, tmp_path, n_resamples=50, score_before=raw, operating_points=points
    )
    assert out["calibration_before"]["ece"] > out["calibration"]["ece"]
    for name, t in points.items():
        point = out["operating_points"][name]
        assert point["threshold"] == t and point["confusion"] == confusion(y, calibrated, t)
        for k in ("sensitivity", "specificity"):
            assert point[k]["ci_low"] <= point[k]["value"] <= point[k]["ci_high"]
            assert point[k]["value"] == pytest.approx(binary_metrics(y, calibrated, t)[k])
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["figures"]["reliability_table_before"] == "evaluation_calibration_before.csv"
    assert (tmp_path / "evaluation_calibration_before.csv").stat().st_size > 0
    plain = evaluate_binary(y, calibrated, np.arange(60) // 2, 0.5, tmp_path / "plain", n_resamples=10)
    assert "operating_points" not in plain and "calibration_before" not in plain


def test_format_breakdown_of_a_calibrated_result_reads_the_logits(tmp_path) -> None:
    from PIL import Image

    from scripts.evaluation_report import add_format_breakdown

    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    logit = [-4.0, -1.0, 1.0, 4.0]
    collected = {
        "pred": [0.9, 0.9, 0.9, 0.9],  # uncalibrated probabilities; not what the calibrated threshold is on
        "logit": logit,
        "label": [0, 0, 1, 1],
        "source_image": ["a.png"] * 4,
    }
    result = {"threshold": 0.5, "temperature": 4.0}
    out = add_format_breakdown(result, collected, tmp_path, tmp_path)
    (only,) = out["by_format"].values()
    assert only["accuracy"] == 1.0  # sigmoid(logit / 4) >= 0.5 for the two fractures only
    with pytest.raises(KeyError, match="logit"):
        add_format_breakdown(result, {k: v for k, v in collected.items() if k != "logit"}, tmp_path, tmp_path)
