"""Pictures a person looks at: the X-ray with the box, the probability and the suspected region."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import binary_dilation

RED, GREEN, YELLOW, CYAN = (230, 40, 40), (40, 200, 80), (250, 210, 40), (40, 200, 230)


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font (no font file is read from disk or fetched)."""
    return ImageFont.load_default(size=size)


def to_rgb(image01: np.ndarray) -> np.ndarray:
    """A ``(rows, cols)`` image in [0, 1] as ``(rows, cols, 3)`` uint8."""
    gray = np.round(np.clip(image01, 0, 1) * 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def overlay(
    image01: np.ndarray,
    box=None,
    probability: float | None = None,
    fracture: bool | None = None,
    threshold: float | None = None,
    heatmap: np.ndarray | None = None,
    region: np.ndarray | None = None,
    note: str = "",
) -> np.ndarray:
    """The X-ray with the nasal bone box, the fracture probability and (if flagged) the region drawn on it.

    ``heatmap`` (same grid, [0, 1]) is blended in red inside the box; ``region`` (bool) is outlined
    in yellow. Returns ``(rows, cols, 3)`` uint8 on the input's pixel grid.
    """
    rgb = to_rgb(image01).astype(np.float32)
    if heatmap is not None and fracture:
        alpha = 0.45 * np.clip(heatmap, 0, 1)[..., None]
        rgb = rgb * (1 - alpha) + np.array(RED, np.float32) * alpha
    if region is not None and fracture and region.any():
        width = max(1, round(min(image01.shape) / 300))
        edge = binary_dilation(region, iterations=width) & ~region
        rgb[edge] = YELLOW
    im = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    size = max(12, round(min(image01.shape) / 28))
    colour = RED if fracture else GREEN if fracture is not None else CYAN
    if box is not None:
        draw.rectangle([float(v) for v in box], outline=colour, width=max(2, size // 8))
    if probability is None:
        text = note or "no nasal bone found"
    else:
        verdict = "FRACTURE suspected" if fracture else "no fracture"
        text = f"{verdict}  p={probability:.2f} (threshold {threshold:.2f})"
    lines = [text, "research use only - not a diagnosis"]
    y = 4
    for line, fill in zip(lines, (colour, (200, 200, 200)), strict=True):
        draw.rectangle([4, y, 8 + draw.textlength(line, font=_font(size)), y + size + 4], fill=(0, 0, 0))
        draw.text((6, y + 1), line, fill=fill, font=_font(size))
        y += size + 8
        size = max(10, size * 2 // 3)
    return np.asarray(im)
