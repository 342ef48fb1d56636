"""Dataset writing: per-patient plan (seed, label, file kinds), image/mask files, ``dataset.csv`` and preview.

File kinds are ``scripts.imageio.KINDS`` and ``site.INVERTED_KINDS`` (an imageio kind written with ``1 - image``:
a MONOCHROME1 image exported to PNG/JPEG by a tool that ignored its photometric interpretation).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .preview import save_preview
from .render import render_patient
from .site import INVERTED_KINDS, SITE_B_FORMATS, check_site

DEFAULT_FORMATS: dict[str, float] = {  # file kind (scripts.imageio.KINDS) -> share of images
    "png8": 0.35,
    "png16": 0.1,
    "png16_12bit": 0.1,  # 12-bit values in a 16-bit PNG, a common PACS/research export
    "jpeg": 0.1,
    "dcm": 0.1,
    "dcm_mono1": 0.1,
    "dcm_rle": 0.05,
    "nii": 0.1,
}
CSV_COLUMNS = ("image", "patient_id", "label", "nasion_x", "nasion_y", "tip_x", "tip_y", "fracture_mask")


def _patient_plan(seed: int, i: int, fracture_rate: float, formats: Mapping[str, float]) -> tuple[int, bool, list[str]]:
    """Patient ``i``'s seed, label and file kinds of its two views, from ``default_rng([seed, i])`` only."""
    rng = np.random.default_rng([seed, i])
    patient_seed = int(rng.integers(1 << 62))
    fracture = bool(rng.random() < fracture_rate)
    kinds, weights = list(formats), np.asarray(list(formats.values()), float)
    chosen = [str(k) for k in rng.choice(kinds, size=2, p=weights / weights.sum())]
    return patient_seed, fracture, chosen


def write_dataset(
    out_dir: str | Path,
    n_images: int = 1000,
    fracture_rate: float = 0.4,
    seed: int = 0,
    size: int = 512,
    formats: Mapping[str, float] | None = None,
    stats: dict | None = None,
    site: str = "a",
) -> Path:
    """Write ``n_images`` views (2 per patient; the last patient has 1 if ``n_images`` is odd) of device ``site``.

    ``formats`` (file kind -> share) defaults to the site's: ``DEFAULT_FORMATS`` (site a), ``SITE_B_FORMATS`` (b).

    Creates ``images/``, ``masks/`` (fracture views only), ``dataset.csv`` (columns ``CSV_COLUMNS``,
    paths relative to ``out_dir``) and ``preview.png``; returns the csv path. If ``stats`` is given it
    receives counts and timings.
    """
    from PIL import Image

    from scripts.imageio import save_xray

    formats = formats or (SITE_B_FORMATS if check_site(site) == "b" else DEFAULT_FORMATS)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows, preview = [], []
    t_render = t_write = 0.0
    for i in range((n_images + 1) // 2):
        pid = f"P{i:04d}"
        pseed, fracture, kinds = _patient_plan(seed, i, fracture_rate, formats)
        t0 = time.perf_counter()
        views = render_patient(pseed, fracture, n_views=min(2, n_images - 2 * i), size=size, site=site)
        t1 = time.perf_counter()
        for v, view in enumerate(views):
            name = f"{pid}_{v}"
            if kinds[v] in INVERTED_KINDS:
                path = save_xray(out / "images" / name, 1 - view.image, INVERTED_KINDS[kinds[v]])
            else:
                path = save_xray(out / "images" / name, view.image, kinds[v])
            mask_rel = ""
            if view.label:
                mask_rel = f"masks/{name}.png"
                Image.fromarray(view.mask * np.uint8(255)).save(out / mask_rel)
            rows.append(
                {
                    "image": path.relative_to(out).as_posix(),
                    "patient_id": pid,
                    "label": view.label,
                    "nasion_x": f"{view.nasion[0]:.3f}",
                    "nasion_y": f"{view.nasion[1]:.3f}",
                    "tip_x": f"{view.tip[0]:.3f}",
                    "tip_y": f"{view.tip[1]:.3f}",
                    "fracture_mask": mask_rel,
                }
            )
            if len(preview) < 16:
                preview.append(view)
        t_render += t1 - t0
        t_write += time.perf_counter() - t1
    csv_path = out / "dataset.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if preview:
        save_preview(preview, out / "preview.png")
    if stats is not None:
        stats.update(
            images=len(rows),
            patients=len({r["patient_id"] for r in rows}),
            fractures=sum(r["label"] for r in rows),
            render_s=t_render,
            write_s=t_write,
        )
    return csv_path
