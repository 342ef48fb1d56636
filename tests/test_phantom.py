"""Tests of the procedural lateral head X-ray phantom (small sizes, a few seconds in all)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import scripts  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from tools.phantom import CSV_COLUMNS, PhantomView, render_patient, write_dataset  # noqa: E402

SIZE = 256


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((points - a) @ ab) / (ab @ ab), 0, 1)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


@pytest.fixture(scope="module")
def patients() -> dict[tuple[int, bool], list[PhantomView]]:
    return {(seed, frac): render_patient(seed, frac, size=SIZE) for seed in (1, 2, 3) for frac in (False, True)}


def test_deterministic() -> None:
    a = render_patient(7, True, size=SIZE)
    b = render_patient(7, True, size=SIZE)
    c = render_patient(8, True, size=SIZE)
    for va, vb in zip(a, b, strict=True):
        assert va.image.tobytes() == vb.image.tobytes()
        assert va.mask.tobytes() == vb.mask.tobytes()
        assert (va.nasion, va.tip) == (vb.nasion, vb.tip)
    assert not np.array_equal(a[0].image, c[0].image)


def test_types_and_ranges(patients: dict) -> None:
    for views in patients.values():
        for v in views:
            assert v.image.shape == (SIZE, SIZE) and v.image.dtype == np.float32
            assert 0.0 <= v.image.min() and v.image.max() <= 1.0
            assert v.mask.shape == (SIZE, SIZE) and v.mask.dtype == np.uint8
            assert set(np.unique(v.mask)) <= {0, 1}


def test_two_views_same_label_different_acquisition(patients: dict) -> None:
    for (_, frac), views in patients.items():
        assert len(views) == 2
        assert {v.label for v in views} == {int(frac)}
        assert not np.array_equal(views[0].image, views[1].image)


def test_landmarks(patients: dict) -> None:
    for views in patients.values():
        for v in views:
            (nx, ny), (tx, ty) = v.nasion, v.tip
            for x, y in (v.nasion, v.tip):
                assert 0 <= x < SIZE and 0 <= y < SIZE
            assert tx > nx and ty > ny  # tip is anterior (face to the right) and lower
            assert 0.05 * SIZE < np.hypot(tx - nx, ty - ny) < 0.2 * SIZE


def test_mask_iff_fracture_and_near_bone(patients: dict) -> None:
    for (_, frac), views in patients.items():
        for v in views:
            assert bool(v.mask.any()) == frac
            if frac:
                ys, xs = np.nonzero(v.mask)
                pts = np.stack([xs, ys], axis=1).astype(float)
                dist = _segment_distance(pts, np.array(v.nasion), np.array(v.tip))
                assert dist.max() < 6 + 0.1 * np.hypot(v.tip[0] - v.nasion[0], v.tip[1] - v.nasion[1])


def test_bone_brighter_than_surroundings(patients: dict) -> None:
    """Along the nasion-tip segment the image is brighter than a few pixels in front of it (skin, air)."""
    for views in patients.values():
        for v in views:
            a, b = np.array(v.nasion), np.array(v.tip)
            u = (b - a) / np.linalg.norm(b - a)
            n = np.array([u[1], -u[0]])  # anterior normal (towards the skin, up-right)
            ts = np.linspace(0.3, 0.8, 12)
            on = [v.image[int(round(p[1])), int(round(p[0]))] for p in (a + t * (b - a) for t in ts)]
            off = [v.image[int(round(p[1])), int(round(p[0]))] for p in (a + t * (b - a) + 6 * n for t in ts)]
            assert np.mean(on) > np.mean(off) + 0.05


def test_fracture_changes_only_near_bone() -> None:
    """Anatomy, confounders and acquisition do not depend on the label: the paired difference is local."""
    normal = render_patient(5, False, n_views=1, size=SIZE)[0]
    fracture = render_patient(5, True, n_views=1, size=SIZE)[0]
    diff = np.abs(normal.image - fracture.image) > 1e-6
    ys, xs = np.nonzero(diff)
    assert len(xs) > 0
    dist = _segment_distance(np.stack([xs, ys], 1).astype(float), np.array(fracture.nasion), np.array(fracture.tip))
    assert dist.max() < 12


def test_write_dataset(tmp_path: Path) -> None:
    formats = {"png8": 0.5, "dcm": 0.3, "nii": 0.2}
    csv_path = write_dataset(tmp_path / "ds", n_images=6, fracture_rate=0.5, seed=3, size=SIZE, formats=formats)
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    assert len(rows) == 6
    assert [r["patient_id"] for r in rows] == ["P0000", "P0000", "P0001", "P0001", "P0002", "P0002"]
    root = csv_path.parent
    assert (root / "preview.png").is_file()
    for r in rows:
        assert (root / r["image"]).is_file() and r["image"].startswith("images/")
        assert r["label"] in ("0", "1")
        assert (r["fracture_mask"] != "") == (r["label"] == "1")
        if r["fracture_mask"]:
            assert (root / r["fracture_mask"]).is_file() and r["fracture_mask"].startswith("masks/")
        for key in ("nasion_x", "nasion_y", "tip_x", "tip_y"):
            assert 0 <= float(r[key]) < SIZE
    # patient content does not depend on how many images are written
    again = write_dataset(tmp_path / "ds2", n_images=2, fracture_rate=0.5, seed=3, size=SIZE, formats=formats)
    with open(again, newline="") as f:
        first = list(csv.DictReader(f))
    key = [(r["label"], r["nasion_x"], r["tip_y"]) for r in first]
    assert key == [(r["label"], r["nasion_x"], r["tip_y"]) for r in rows[:2]]
