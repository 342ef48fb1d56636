"""``scripts.geometry``: the landmark box convention, and crops that map back onto the original image."""

from __future__ import annotations

import numpy as np

from scripts.geometry import box_iou, clip_box, contains, crop_box, landmark_box, paste_back, squarify


def test_landmark_box_is_square_contains_both_points_with_margin() -> None:
    nasion, tip = (100.0, 80.0), (140.0, 150.0)
    box = landmark_box(nasion, tip, margin=0.3)
    assert np.isclose(box[2] - box[0], box[3] - box[1])
    assert np.isclose(box[3] - box[1], 70 * 1.6)
    assert contains(box, [nasion, tip])
    assert np.allclose((box[:2] + box[2:]) / 2, (120, 115))
    assert not contains(landmark_box(nasion, tip, margin=-0.2), [nasion, tip])


def test_squarify_and_iou() -> None:
    assert np.allclose(squarify([0, 0, 10, 4]), [0, -3, 10, 7])
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert np.isclose(box_iou([0, 0, 10, 10], [5, 0, 15, 10]), 1 / 3)
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0


def test_clip_box_keeps_pixel_centres_inside_a_non_square_image() -> None:
    assert np.allclose(clip_box([-5.0, 10.0, 250.0, 400.0], (300, 200)), [0, 10, 199, 299])
    assert np.allclose(clip_box([3.0, 4.0, 5.0, 6.0], (300, 200, 3)), [3, 4, 5, 6])


def test_geometry_imports_nothing_from_the_bundle() -> None:
    import ast
    import inspect

    import scripts.geometry

    tree = ast.parse(inspect.getsource(scripts.geometry))
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {("." * n.level) + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert modules <= {"__future__", "dataclasses", "numpy", "scipy.ndimage", "cv2"}, modules


def test_crop_then_paste_back_lands_on_the_same_pixels_in_a_non_square_image() -> None:
    h, w = 300, 420
    img = np.zeros((h, w), np.float32)
    img[150:156, 250:258] = 1.0  # a feature at rows 150-155, cols 250-257
    box = [200.0, 110.0, 300.0, 210.0]  # 100 px square, resampled to 64 px
    crop = crop_box(img, box, 64)
    ys, xs = np.nonzero(crop > 0.5)
    # the feature's centre (x=253.5, y=152.5) at crop scale 64/100 relative to the box corner
    assert (
        abs(xs.mean() - (253.5 - 200 + 0.5) * 0.64 + 0.5) < 1.0
        and abs(ys.mean() - (152.5 - 110 + 0.5) * 0.64 + 0.5) < 1.0
    )
    back = paste_back(crop, box, (h, w))
    assert back.shape == (h, w)
    ys, xs = np.nonzero(back > 0.5)
    assert abs(xs.mean() - 253.5) < 1.0 and abs(ys.mean() - 152.5) < 1.0
    assert back[:, :190].max() == 0 and back[:100].max() == 0  # nothing outside the box


def test_crop_outside_image_is_zero_padded() -> None:
    img = np.ones((50, 50), np.float32)
    crop = crop_box(img, [-50, -50, 50, 50], 20)
    assert crop[:5, :5].max() == 0 and crop[-5:, -5:].min() > 0.99


def _two_folders(tiny_dataset, root, n: int = 8):
    """A dataset whose images come in pairs with the same file name: ``a/<name>`` and ``b/<name>``."""
    import csv
    import shutil

    from scripts.dataset import write_dataset_csv

    with open(tiny_dataset / "dataset.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    out = []
    for folder in ("a", "b"):
        for row in rows:
            row = dict(row, patient_id=f"{folder}_{row['patient_id']}")
            for key in ("image", "fracture_mask"):
                if row[key]:
                    dest = root / folder / row[key]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(tiny_dataset / row[key], dest)
                    row[key] = f"{folder}/{row[key]}"
            out.append(row)
    write_dataset_csv(root, out)
    return root


def test_crop_cache_is_keyed_by_its_inputs_and_names_never_collide(tiny_dataset, tmp_path) -> None:
    import csv
    from pathlib import Path

    from scripts.crops import ensure_crops, unique_stems

    data = _two_folders(tiny_dataset, tmp_path / "data")
    split_file, crops_dir = tmp_path / "out" / "split.csv", tmp_path / "out" / "crops" / "landmarks_32"
    first = ensure_crops(data, split_file, crops_dir, 32, "landmarks", fractions=[0.5, 0.25, 0.25], seed=1)
    assert first.parent.name.startswith("landmarks_32_") and (first.parent / "fingerprint.json").is_file()
    with open(first, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and len({r["image"] for r in rows}) == 16
    assert {Path(r["image"]).name.split("__")[0] for r in rows} == {"a", "b"}
    assert len(list((first.parent / "images").iterdir())) == 16
    # same inputs: the cache is reused as it is
    stamp = first.stat().st_mtime_ns
    assert ensure_crops(data, split_file, crops_dir, 32, "landmarks", fractions=[0.5, 0.25, 0.25], seed=1) == first
    assert first.stat().st_mtime_ns == stamp
    # changed data (a landmark moved): a new cache beside the old one; the split (same images) is kept
    split_stamp = split_file.stat().st_mtime_ns
    table = (data / "dataset.csv").read_text().splitlines()
    cells = table[1].split(",")
    cells[3] = str(float(cells[3]) + 5)
    (data / "dataset.csv").write_text("\n".join([table[0], ",".join(cells), *table[2:]]) + "\n")
    second = ensure_crops(data, split_file, crops_dir, 32, "landmarks")
    assert second != first and second.is_file() and first.is_file()
    assert split_file.stat().st_mtime_ns == split_stamp
    # another margin, another cache
    assert ensure_crops(data, split_file, crops_dir, 32, "landmarks", margin=0.5).parent not in (
        first.parent,
        second.parent,
    )
    assert unique_stems(["a/x.dcm", "b/x.dcm", "c/y.nii.gz"]) == {
        "a/x.dcm": "a__x",
        "b/x.dcm": "b__x",
        "c/y.nii.gz": "c__y",
    }
    stems = unique_stems(["a/x.png", "a/x.dcm"])
    assert len(set(stems.values())) == 2 and all(s.startswith("a__x_") for s in stems.values())
