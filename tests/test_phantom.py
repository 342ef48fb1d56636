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


# --- device profiles (tools/phantom/site.py) ---

# site a's output before the profiles existed: (nasion x, y, tip x, y, mask pixels, image mean, std of a 8x8
# subsample) of render_patient(seed, fracture, size=128) for seeds 11, 12, normal then fracture, two views each
SITE_A_GOLDEN = [
    (97.064, 63.678, 103.675, 77.345, 0, 0.4844, 0.29821),
    (95.532, 65.584, 101.671, 79.796, 0, 0.5547, 0.29322),
    (97.064, 63.678, 103.675, 77.345, 38, 0.48439, 0.29821),
    (95.532, 65.584, 101.671, 79.796, 40, 0.55468, 0.29322),
    (100.196, 56.644, 109.365, 68.865, 0, 0.56077, 0.36737),
    (102.917, 55.359, 111.975, 67.986, 0, 0.59063, 0.30313),
    (100.196, 56.644, 107.556, 69.986, 50, 0.56074, 0.36737),
    (102.917, 55.359, 110.111, 69.086, 52, 0.59062, 0.30342),
]


def test_default_site_unchanged() -> None:
    """The default (site a) renders what it rendered before site b existed, and ``site="a"`` is the default."""
    views = [v for s in (11, 12) for f in (False, True) for v in render_patient(s, f, size=128)]
    for v, gold in zip(views, SITE_A_GOLDEN, strict=True):
        assert np.allclose((*v.nasion, *v.tip), gold[:4], atol=1e-3)
        assert int(v.mask.sum()) == gold[4]
        assert abs(float(v.image.mean()) - gold[5]) < 2e-5
        assert abs(float(v.image[::16, ::16].std()) - gold[6]) < 2e-5
    explicit = render_patient(11, True, size=128, site="a")
    assert all(a.image.tobytes() == b.image.tobytes() for a, b in zip(views[2:4], explicit, strict=True))
    with pytest.raises(ValueError, match="unknown site"):
        render_patient(11, True, size=128, site="c")


@pytest.fixture(scope="module")
def site_pairs() -> list[tuple[PhantomView, PhantomView]]:
    """The same patients (same anatomy and fracture) on site a and on site b."""
    pairs = []
    for seed in (1, 2, 3, 4):
        a = render_patient(seed, seed % 2 == 0, size=SIZE)
        b = render_patient(seed, seed % 2 == 0, size=SIZE, site="b")
        pairs += list(zip(a, b, strict=True))
    return pairs


def test_site_b_device_settings() -> None:
    """Site b's view: S-shaped tone curve, harder gamma, unsharp masking, longer exposure, bright collimation."""
    from tools.phantom.sampling import sample_view
    from tools.phantom.site import site_b_view, tone_curve, unsharp_mask

    base = {"scale": 1.0, "theta": 0.0, "dx": 0.0, "dy": 0.0}
    for v in range(20):
        view = sample_view(np.random.default_rng(v), base, SIZE)
        site_b_view(view, np.random.default_rng([v, 6]))
        assert view.site == "b" and view.tone is not None and view.unsharp[0] >= 0.6
        assert 0.3 <= view.exposure <= 0.5 and 1.0 <= view.gamma <= 1.3
        assert 2 <= len(view.collimation) <= 4 and all(value >= 0.9 for _, _, value in view.collimation)
    x = np.linspace(0, 1, 101)
    s = tone_curve(x, 5.0, 0.5)
    assert s[0] == pytest.approx(0) and s[-1] == pytest.approx(1) and np.all(np.diff(s) > 0)
    assert np.diff(s)[50] > 1.3 * np.diff(x)[50] > 1.3 * np.diff(s)[0]  # steeper in the middle: an S
    step = np.repeat(np.r_[np.zeros(16), np.ones(16)][None], 8, 0).astype(np.float32)
    sharp = unsharp_mask(step, 1.0, 2.0)
    assert sharp.max() > 1.05 and sharp.min() < -0.05  # overshoot on both sides of an edge


def test_site_b_images_differ(site_pairs: list) -> None:
    """Same patient, other device: larger head, other position, sharper, burned-in text block top left."""
    for a, b in site_pairs:
        assert a.label == b.label and b.meta["site"] == "b" and a.meta["site"] == "a"
        assert 1.1 < b.meta["px_per_mm"] / a.meta["px_per_mm"] < 1.45
        assert 1.1 < b.meta["bone_length_px"] / a.meta["bone_length_px"] < 1.45
        assert not np.allclose(a.nasion, b.nasion, atol=5)
        top_left = b.image[: SIZE // 8, : SIZE // 3]
        assert (top_left == 1.0).sum() > 50 and (top_left == 0.0).sum() > 50  # white text, black outline

    def detail(img: np.ndarray) -> float:  # high-frequency share of the image (edges and noise)
        from scipy import ndimage

        return float(np.abs(img - ndimage.gaussian_filter(img, 3.0)).mean() / (img.std() + 1e-6))

    assert np.mean([detail(b.image) for _, b in site_pairs]) > 1.2 * np.mean([detail(a.image) for a, _ in site_pairs])


def test_site_b_landmarks_and_masks_on_bone(site_pairs: list) -> None:
    """After site b's scale and position change the landmarks stay on the bone and the masks on the fracture."""
    for a, b in site_pairs:
        for v in (a, b):
            (nx, ny), (tx, ty) = v.nasion, v.tip
            assert 0.1 * SIZE <= min(nx, tx) and max(nx, tx) <= 0.9 * SIZE and 0.1 * SIZE <= min(ny, ty)
            assert tx > nx and ty > ny
            p0, p1 = np.array(v.nasion), np.array(v.tip)
            u = (p1 - p0) / np.linalg.norm(p1 - p0)
            n = np.array([u[1], -u[0]])
            img = v.image
            on = [
                img[int(round(p[1])), int(round(p[0]))] for p in (p0 + t * (p1 - p0) for t in np.linspace(0.3, 0.8, 12))
            ]
            off = [
                img[int(round(p[1])), int(round(p[0]))]
                for p in (p0 + t * (p1 - p0) + 6 * n for t in np.linspace(0.3, 0.8, 12))
            ]
            assert np.mean(on) > np.mean(off) + 0.05
            assert bool(v.mask.any()) == bool(v.label)
            if v.label:
                ys, xs = np.nonzero(v.mask)
                dist = _segment_distance(np.stack([xs, ys], 1).astype(float), p0, p1)
                assert dist.max() < 6 + 0.1 * np.hypot(*(p1 - p0))
        if b.label:  # the mask lies at the same place along the bone on both sites

            def along(v: PhantomView) -> float:
                ys, xs = np.nonzero(v.mask)
                p0, p1 = np.array(v.nasion), np.array(v.tip)
                return float(np.mean((np.stack([xs, ys], 1) - p0) @ (p1 - p0)) / ((p1 - p0) @ (p1 - p0)))

            assert abs(along(a) - along(b)) < 0.12


def test_site_b_dataset_monochrome1(tmp_path: Path) -> None:
    """Site b's files: MONOCHROME1 DICOM stored inverted and read back in the bundle's polarity; inverted JPEGs."""
    import pydicom

    from scripts.imageio import load_xray, robust_window
    from tools.phantom.dataset import _patient_plan
    from tools.phantom.site import SITE_B_FORMATS

    csv_path = write_dataset(tmp_path / "b", n_images=8, fracture_rate=0.5, seed=5, size=SIZE, site="b")
    rows = list(csv.DictReader(open(csv_path, newline="")))
    assert {Path(r["image"]).suffix for r in rows} <= {".dcm", ".jpg"}
    assert set(SITE_B_FORMATS) == {"dcm_mono1", "jpeg_inverted"}
    formats = {"dcm_mono1": 0.5, "jpeg_inverted": 0.5}
    csv_path = write_dataset(
        tmp_path / "m", n_images=8, fracture_rate=0.5, seed=5, size=SIZE, formats=formats, site="b"
    )
    rows = list(csv.DictReader(open(csv_path, newline="")))
    kinds = set()
    for i in range(4):
        pseed, fracture, _ = _patient_plan(5, i, 0.5, formats)
        views = render_patient(pseed, fracture, size=SIZE, site="b")
        for v, view in enumerate(views):
            row = rows[2 * i + v]
            assert (float(row["nasion_x"]), float(row["tip_y"])) == pytest.approx(
                (view.nasion[0], view.tip[1]), abs=1e-3
            )
            path = csv_path.parent / row["image"]
            loaded = load_xray(path)
            if path.suffix == ".dcm":
                ds = pydicom.dcmread(path)
                assert ds.PhotometricInterpretation == "MONOCHROME1"
                stored = np.round(view.image * 4095).astype(np.uint16)
                assert np.array_equal(ds.pixel_array, 4095 - stored)  # inverted when stored
                assert np.abs(loaded - robust_window(stored)).max() < 1e-5  # and inverted back when read
                kinds.add("dcm")
            else:  # a JPEG of the stored values: bone dark
                assert np.corrcoef(loaded.ravel(), view.image.ravel())[0, 1] < -0.95
                kinds.add("jpg")
    assert kinds == {"dcm", "jpg"}


def test_site_comparison_picture(tmp_path: Path) -> None:
    """docs/site_b.png's maker: one row a patient, five tiles (A, B stored, B read, the two nasal regions)."""
    from PIL import Image

    from tools.phantom import save_site_comparison

    path = save_site_comparison(tmp_path / "sites.png", seeds=(1, 2), tile=64)
    assert np.asarray(Image.open(path)).shape == (28 + 2 * 68, 5 * 68, 3)
