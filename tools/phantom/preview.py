"""Annotated preview tiles (landmarks, mask outline, label), their contact sheet, and the site A/B comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from .font import text_bitmap
from .params import Array, PhantomView


def _cross(rgb: Array, x: float, y: float, color: tuple[int, int, int], r: int = 5) -> None:
    h, w, _ = rgb.shape
    xi, yi = int(round(x)), int(round(y))
    rgb[max(yi - r, 0) : min(yi + r + 1, h), min(max(xi, 0), w - 1)] = color
    rgb[min(max(yi, 0), h - 1), max(xi - r, 0) : min(xi + r + 1, w)] = color


def preview_tile(view: PhantomView, tile: int = 384) -> Array:
    """RGB tile: image, nasion (cyan) and tip (yellow) crosses, mask outline (magenta), label border."""
    from PIL import Image

    size = view.image.shape[0]
    f = tile / size
    gray = np.asarray(Image.fromarray(np.round(view.image * 255).astype(np.uint8)).resize((tile, tile), Image.BILINEAR))
    rgb = np.repeat(gray[..., None], 3, axis=2).copy()
    if view.mask.any():
        m = np.asarray(Image.fromarray(view.mask * np.uint8(255)).resize((tile, tile), Image.NEAREST)) > 0
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = (255, 0, 255)
    _cross(rgb, view.nasion[0] * f, view.nasion[1] * f, (0, 255, 255))
    _cross(rgb, view.tip[0] * f, view.tip[1] * f, (255, 255, 0))
    color = (230, 30, 30) if view.label else (30, 200, 30)
    rgb[:3], rgb[-3:], rgb[:, :3], rgb[:, -3:] = color, color, color, color
    bm = text_bitmap("F" if view.label else "N", 3)
    rgb[6 : 6 + bm.shape[0], 6 : 6 + bm.shape[1]][bm] = color
    return rgb


def save_preview(views: list[PhantomView], path: str | Path, cols: int = 4, tile: int = 384) -> Path:
    """Save a grid of preview tiles (up to ``cols`` x ``cols``)."""
    from PIL import Image

    tiles = [preview_tile(v, tile) for v in views[: cols * cols]]
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[r : r + cols], axis=1) for r in range(0, len(tiles), cols)], axis=0)
    Image.fromarray(grid).save(path)
    return Path(path)


def _tile(img: Array, tile: int, box: tuple[float, float, float, float] | None = None) -> Array:
    """Gray ``img`` (or its ``box`` x0, y0, x1, y1) resized to ``tile`` x ``tile``, as 8-bit RGB."""
    from PIL import Image

    u8 = Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8))
    u8 = u8.crop(tuple(int(round(v)) for v in box)) if box else u8
    gray = np.asarray(u8.resize((tile, tile), Image.BILINEAR))
    return np.repeat(gray[..., None], 3, axis=2).copy()


def save_site_comparison(path: str | Path, seeds: tuple[int, ...] = (101, 202, 303), tile: int = 256) -> Path:
    """The same patients on site A and site B, each written in its site's format and read back by the bundle's loader.

    Columns: site A as the bundle reads it; site B's stored MONOCHROME1 values (what a viewer ignoring the
    photometric interpretation shows: also what its inverted JPEG exports hold); site B as the bundle reads it;
    the nasal bone region of A and of B (landmark box grown by 60%, nasion cyan, tip yellow).
    """
    import tempfile

    import pydicom
    from PIL import Image, ImageDraw, ImageFont

    from scripts.imageio import load_xray, save_xray

    from .render import render_patient

    titles = [
        "site A (as read)",
        "site B stored (MONOCHROME1)",
        "site B (as read)",
        "site A nasal bone",
        "site B nasal bone",
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, seed in enumerate(seeds):
            a, b = (render_patient(seed, i % 2 == 0, n_views=1, site=site)[0] for site in ("a", "b"))
            read_a = load_xray(save_xray(Path(tmp) / f"a{i}", a.image, "png8"))
            dcm = save_xray(Path(tmp) / f"b{i}", b.image, "dcm_mono1")
            stored = pydicom.dcmread(dcm).pixel_array / 4095.0
            read_b = load_xray(dcm)
            tiles = [_tile(read_a, tile), _tile(stored, tile), _tile(read_b, tile)]
            for view, img in ((a, read_a), (b, read_b)):
                (nx, ny), (tx, ty) = view.nasion, view.tip
                half = 0.8 * max(abs(tx - nx), abs(ty - ny))
                cx, cy = (nx + tx) / 2, (ny + ty) / 2
                box = (cx - half, cy - half, cx + half, cy + half)
                rgb = _tile(img, tile, box)
                f = tile / (2 * half)
                _cross(rgb, (nx - box[0]) * f, (ny - box[1]) * f, (0, 255, 255))
                _cross(rgb, (tx - box[0]) * f, (ty - box[1]) * f, (255, 255, 0))
                tiles.append(rgb)
            rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0))) for t in tiles], axis=1))
    grid = np.concatenate(rows, axis=0)
    head = Image.new("RGB", (grid.shape[1], 28), (255, 255, 255))
    draw, font = ImageDraw.Draw(head), ImageFont.load_default(size=15)
    for k, title in enumerate(titles):
        draw.text((k * (tile + 4) + 6, 6), title, fill=(0, 0, 0), font=font)
    Image.fromarray(np.concatenate([np.asarray(head), grid], axis=0)).save(path)
    return Path(path)
