"""Fingerprints, fingerprint-keyed resumption, and the pipeline's skip-or-train decision."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from scripts import fingerprint
from scripts.pipeline import prepare_stage_dir, stage_decision
from scripts.resume import latest_checkpoint, resume_checkpoint


def test_digest_is_stable_and_order_free(tmp_path: Path) -> None:
    assert fingerprint.digest({"a": 1, "b": [1, 2]}) == fingerprint.digest({"b": [1, 2], "a": 1})
    assert fingerprint.digest({"a": 1}) != fingerprint.digest({"a": 2})
    assert len(fingerprint.digest(None)) == fingerprint.LENGTH
    path = tmp_path / "w.pt"
    assert fingerprint.file_fingerprint(path) == "missing"
    path.write_bytes(b"one")
    first = fingerprint.file_fingerprint(path)
    path.write_bytes(b"two")
    assert fingerprint.file_fingerprint(path) != first
    assert fingerprint.without({"lr": 1, "num_threads": 4, "sub": {"num_threads": 2}}) == {"lr": 1, "sub": {}}


def test_dataset_fingerprint_sees_the_table_and_the_files(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "dataset.csv").write_text("image,fracture_mask\na.png,\n")
    fp = fingerprint.dataset_fingerprint(tmp_path)
    assert fp == fingerprint.dataset_fingerprint(tmp_path)
    st = (tmp_path / "a.png").stat()
    os.utime(tmp_path / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fingerprint.dataset_fingerprint(tmp_path) != fp
    content = fingerprint.dataset_fingerprint(tmp_path, content=True)
    os.utime(tmp_path / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    assert fingerprint.dataset_fingerprint(tmp_path, content=True) == content  # same bytes


def test_sidecar_records_parts_and_says_why(tmp_path: Path) -> None:
    weights = tmp_path / "models" / "classifier.pt"
    assert fingerprint.sidecar(weights) == tmp_path / "models" / "classifier.fingerprint.json"
    parts = {"dataset": "d1", "config": "c1"}
    assert fingerprint.matches(weights, parts) == (False, "no fingerprint recorded")
    fp = fingerprint.record(weights, parts, {"epochs": 3})
    doc = fingerprint.read(weights)
    assert doc["fingerprint"] == fp and doc["inputs"] == {"epochs": 3}
    assert fingerprint.matches(weights, parts) == (True, "")
    assert fingerprint.why(doc, {"dataset": "d2", "config": "c1"}) == "dataset changed"
    assert fingerprint.why(doc, {"dataset": "d2", "config": "c2"}) == "config, dataset changed"


def _checkpoints(folder: Path, *epochs: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in epochs:
        torch.save({"epoch": n}, folder / f"checkpoint_epoch={n}.pt")


def test_resume_only_from_a_folder_with_the_same_fingerprint(tmp_path: Path, caplog) -> None:
    ckpt = tmp_path / "checkpoints"
    _checkpoints(ckpt, 2, 10, 9)
    assert Path(latest_checkpoint(ckpt)).name == "checkpoint_epoch=10.pt"
    assert resume_checkpoint(ckpt) is not None  # no fingerprint given: the former behaviour
    parts = fingerprint.stage_fingerprint({"lr": 0.1, "num_threads": 2})
    with caplog.at_level("INFO"):
        assert resume_checkpoint(ckpt, parts) is None  # old checkpoints, no fingerprint recorded: deleted
    assert not list(ckpt.glob("*.pt")) and "no fingerprint recorded" in caplog.text
    _checkpoints(ckpt, 1)  # what this run then saves
    assert resume_checkpoint(ckpt, fingerprint.stage_fingerprint({"lr": 0.1, "num_threads": 8})).endswith("=1.pt")
    with caplog.at_level("INFO"):
        assert resume_checkpoint(ckpt, fingerprint.stage_fingerprint({"lr": 0.2})) is None
    assert not list(ckpt.glob("*.pt")) and "config changed" in caplog.text


def test_stage_is_skipped_iff_its_weights_record_the_same_fingerprint(tmp_path: Path) -> None:
    weights = [tmp_path / "classifier.pt"]
    parts = {"config": "c", "dataset": "d", "split": "s", "detector.pt": "w"}
    assert stage_decision("classifier", weights, parts, False) == (True, f"no weights at {weights[0]}")
    weights[0].write_bytes(b"net")
    assert stage_decision("classifier", weights, parts, False) == (True, "no fingerprint recorded (classifier.pt)")
    fingerprint.record(weights[0], parts)
    train, reason = stage_decision("classifier", weights, parts, False)
    assert not train and reason.startswith("weights match")
    assert stage_decision("classifier", weights, {**parts, "dataset": "d2"}, False) == (True, "dataset changed")
    assert stage_decision("classifier", weights, {**parts, "detector.pt": "w2"}, False) == (True, "detector.pt changed")
    assert stage_decision("classifier", weights, parts, True) == (True, "retrain requested")
    assert stage_decision("classifier", weights, parts, ["classifier"]) == (True, "retrain requested")
    assert not stage_decision("classifier", weights, parts, ["gd"])[0]
    weights[0].write_bytes(b"another net")  # e.g. a stage run alone wrote new weights over the recorded ones
    assert stage_decision("classifier", weights, parts, False) == (
        True,
        "classifier.pt was replaced since its fingerprint was recorded",
    )


def test_retrain_and_changed_inputs_clear_the_stage_folder(tmp_path: Path) -> None:
    stage_dir = tmp_path / "detector"
    parts = {"config": "c"}
    _checkpoints(stage_dir / "train" / "weights", 3)
    prepare_stage_dir(stage_dir, parts, fresh=False)  # made by an unknown run: cleared
    assert not list(stage_dir.rglob("*.pt"))
    _checkpoints(stage_dir / "train" / "weights", 3)
    prepare_stage_dir(stage_dir, parts, fresh=False)  # an interrupted run of the same inputs: kept
    assert list(stage_dir.rglob("*.pt"))
    prepare_stage_dir(stage_dir, parts, fresh=True)  # retrain: from scratch
    assert not list(stage_dir.rglob("*.pt"))
    _checkpoints(stage_dir / "train" / "weights", 3)
    prepare_stage_dir(stage_dir, {"config": "other"}, fresh=False)
    assert not list(stage_dir.rglob("*.pt"))
