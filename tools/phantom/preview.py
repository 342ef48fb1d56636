"""Annotated preview tiles (landmarks, mask outline, label) and their contact sheet."""

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
