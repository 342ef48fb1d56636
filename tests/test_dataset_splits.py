"""The data contract and the patient-grouped split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from scripts.dataset import COLUMNS, DatasetError, read_dataset, write_dataset_csv
from scripts.imageio import save_xray
from scripts.splits import assign_splits, ensure_split, read_split, split_records


def _records(n_patients: int, fracture_every: int = 3) -> list[dict]:
    recs = []
    for p in range(n_patients):
        for v in range(2):
            recs.append({"id": f"P{p:04d}_{v}.png", "patient_id": f"P{p:04d}", "label": int(p % fracture_every == 0)})
    return recs


def _write_folder(root: Path, n_patients: int = 10) -> None:
    rows = []
    root.mkdir(parents=True, exist_ok=True)
    for rec in _records(n_patients):
        img = np.random.default_rng(len(rows)).random((32, 32)).astype(np.float32)
        path = save_xray(root / rec["id"], img, "png8")
        rows.append(
            {
                "image": path.name,
                "patient_id": rec["patient_id"],
                "label": rec["label"],
                "nasion_x": 10,
                "nasion_y": 10,
                "tip_x": 20,
                "tip_y": 22,
                "fracture_mask": "",
            }
        )
    write_dataset_csv(root, rows)


def test_split_is_patient_disjoint_stratified_and_deterministic() -> None:
    recs = _records(200)
    a = assign_splits(recs, (0.8, 0.1, 0.1), seed=1)
    assert a == assign_splits(recs, (0.8, 0.1, 0.1), seed=1)
    assert a != assign_splits(recs, (0.8, 0.1, 0.1), seed=2)
    # each patient has exactly one split, so its two images can never be separated
    per_image = Counter(a[r["patient_id"]] for r in recs)
    assert abs(per_image["train"] / len(recs) - 0.8) < 0.02 and abs(per_image["test"] / len(recs) - 0.1) < 0.02
    for split in ("train", "val", "test"):
        labels = [r["label"] for r in recs if a[r["patient_id"]] == split]
        assert abs(np.mean(labels) - np.mean([r["label"] for r in recs])) < 0.05


def test_split_file_written_once_and_read_back(tmp_path: Path) -> None:
    _write_folder(tmp_path / "d", n_patients=20)
    split_file = ensure_split(tmp_path / "d", tmp_path / "split.csv")
    mapping = read_split(split_file)
    assert len(mapping) == 40
    by_split = {s: split_records(tmp_path / "d", split_file, s) for s in ("train", "val", "test")}
    patients = {s: {r["patient_id"] for r in recs} for s, recs in by_split.items()}
    assert not (
        patients["train"] & patients["val"]
        or patients["train"] & patients["test"]
        or patients["val"] & patients["test"]
    )
    assert sum(len(v) for v in by_split.values()) == 40


def test_hand_edited_split_is_respected_unless_it_separates_a_patient(tmp_path: Path) -> None:
    _write_folder(tmp_path / "d", n_patients=20)
    split_file = ensure_split(tmp_path / "d", tmp_path / "split.csv")
    lines = split_file.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.endswith(",train"))
    patient = lines[first].split(",")[1]
    moved = [line.removesuffix(",train") + ",val" if f",{patient}," in line else line for line in lines]
    one_moved = [moved[first] if i == first else line for i, line in enumerate(lines)]
    split_file.write_text("\n".join(one_moved) + "\n")  # one of the patient's two images moved to val
    assert ensure_split(tmp_path / "d", split_file) == split_file and split_file.read_text().count(",val\n") > 0
    expected = f"split.csv:{first + 2}: column split: patient {patient} is in train here but in val on line {first + 1}"
    with pytest.raises(DatasetError, match=expected):
        split_records(tmp_path / "d", split_file, "train")
    split_file.write_text("\n".join(moved) + "\n")  # both moved: the patient is in val, as edited
    assert patient in {r["patient_id"] for r in split_records(tmp_path / "d", split_file, "val")}
    split_file.write_text("\n".join(moved[:-1]).replace(",test", ",testing", 1) + "\n")
    with pytest.raises(DatasetError) as err:
        split_records(tmp_path / "d", split_file, "val")
    assert "column split: unknown split 'testing'" in str(err.value) and "1 image(s) of the dataset" in str(err.value)


def test_contract_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset.csv: not found"):
        read_dataset(tmp_path)
    (tmp_path / "dataset.csv").write_text("image,label\na.png,1\n")
    with pytest.raises(DatasetError, match="missing column"):
        read_dataset(tmp_path)
    header = ",".join(COLUMNS)
    (tmp_path / "dataset.csv").write_text(f"{header}\na.png,P1,2,1,1,2,2,\nb.png,,1,x,1,2,2,\na.png,P1,1,1,1,2,2,\n")
    with pytest.raises(DatasetError) as err:  # every problem in one error, each with its line and column
        read_dataset(tmp_path)
    for expected in (
        "dataset.csv:2: column label: must be 0 or 1, got '2'",
        "dataset.csv:2: column image: a.png: file not found",
        "dataset.csv:3: column patient_id: empty",
        "dataset.csv:3: column nasion_x: 'x' is not a number",
        "dataset.csv:4: column image: a.png is listed again (first on line 2)",
    ):
        assert expected in str(err.value)
    assert str(err.value).startswith(f"{tmp_path / 'dataset.csv'}: 6 error(s):")


def test_a_byte_order_mark_is_read_as_utf8(tmp_path: Path) -> None:
    _write_folder(tmp_path / "d", n_patients=2)
    csv_path = tmp_path / "d" / "dataset.csv"
    plain = read_dataset(tmp_path / "d")
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())  # what Excel's "CSV UTF-8" writes
    assert read_dataset(tmp_path / "d") == plain


def test_split_honours_fractions_and_seed_when_first_made(tmp_path: Path) -> None:
    _write_folder(tmp_path / "d", n_patients=20)
    records = read_dataset(tmp_path / "d")
    expected = assign_splits(records, (0.5, 0.25, 0.25), seed=7)
    train = split_records(tmp_path / "d", tmp_path / "split.csv", "train", (0.5, 0.25, 0.25), 7)
    assert {r["patient_id"] for r in train} == {p for p, s in expected.items() if s == "train"}
    assert (tmp_path / "split.fingerprint.json").is_file()


def test_split_is_rebuilt_only_when_what_it_is_made_from_changes(tmp_path: Path, caplog) -> None:
    folder, split_file = tmp_path / "d", tmp_path / "split.csv"
    _write_folder(folder, n_patients=20)
    ensure_split(folder, split_file, (0.5, 0.25, 0.25), 1)
    stamp = split_file.stat().st_mtime_ns
    ensure_split(folder, split_file, (0.5, 0.25, 0.25), 1)
    ensure_split(folder, split_file)  # no fractions or seed given: the existing split's are kept
    assert split_file.stat().st_mtime_ns == stamp
    with caplog.at_level("INFO"):
        ensure_split(folder, split_file, (0.5, 0.25, 0.25), 2)
    assert "rebuilding the split: seed changed" in caplog.text
    expected = assign_splits(read_dataset(folder), (0.5, 0.25, 0.25), 2)
    assert read_split(split_file) == {r["id"]: expected[r["patient_id"]] for r in read_dataset(folder)}
    _write_folder(folder, n_patients=24)  # new patients in the dataset
    caplog.clear()
    with caplog.at_level("INFO"):
        assert len(split_records(folder, split_file, "train") + split_records(folder, split_file, "test")) > 0
    assert "dataset changed" in caplog.text and len(read_split(split_file)) == 48


def test_hand_made_split_without_fingerprint_is_used_as_it_is(tmp_path: Path) -> None:
    _write_folder(tmp_path / "d", n_patients=10)
    split_file = ensure_split(tmp_path / "d", tmp_path / "split.csv", seed=4)
    (tmp_path / "split.fingerprint.json").unlink()
    text = split_file.read_text().replace(",train", ",test")
    split_file.write_text(text)
    ensure_split(tmp_path / "d", split_file, (0.8, 0.1, 0.1), 0)
    assert split_file.read_text() == text
