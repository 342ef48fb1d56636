"""Pictures a person looks at: the X-ray with the box, the finding, the probability and the suspected region."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import binary_dilation

RED, GREEN, YELLOW, CYAN, ORANGE = (230, 40, 40), (40, 200, 80), (250, 210, 40), (40, 200, 230), (255, 150, 30)
COLOURS = {"fracture": RED, "suspicious": ORANGE, "no fracture": GREEN, "not assessable": CYAN}


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font (no font file is read from disk or fetched), loaded once per size."""
    return ImageFont.load_default(size=size)


def to_gray8(image01: np.ndarray) -> np.ndarray:
    """An image in [0, 1] (clipped) as uint8 0-255."""
    return np.round(np.clip(image01, 0, 1) * 255).astype(np.uint8)


def to_rgb(image01: np.ndarray) -> np.ndarray:
    """A ``(rows, cols)`` image in [0, 1] as ``(rows, cols, 3)`` uint8."""
    return np.repeat(to_gray8(image01)[..., None], 3, axis=-1)


def _extent(heatmap: np.ndarray | None, region: np.ndarray | None, pad: int) -> tuple[slice, slice] | None:
    """The rows and columns where ``heatmap > 0`` or ``region`` is set, grown by ``pad`` (None if there are none)."""
    marks = [m for m in ((heatmap > 0) if heatmap is not None else None, region) if m is not None]
    if not marks:
        return None
    mark = np.logical_or.reduce(marks) if len(marks) > 1 else np.asarray(marks[0], bool)
    rows, cols = np.flatnonzero(mark.any(1)), np.flatnonzero(mark.any(0))
    if not len(rows):
        return None
    h, w = mark.shape
    return slice(max(0, rows[0] - pad), min(h, rows[-1] + pad + 1)), slice(
        max(0, cols[0] - pad), min(w, cols[-1] + pad + 1)
    )


def dashed_rectangle(draw: ImageDraw.ImageDraw, box, colour, width: int, dash: int) -> None:
    """A rectangle outline of ``dash``-pixel dashes with equal gaps (Pillow draws only solid outlines)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    corners = np.array([(x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1)])
    for a, b in zip(corners[:-1], corners[1:], strict=True):
        length = float(np.abs(b - a).max())
        for start in np.arange(0, length, 2 * dash):
            p, q = a + (b - a) * start / length, a + (b - a) * min(start + dash, length) / length
            draw.line([tuple(p), tuple(q)], fill=colour, width=width)


def _caption(finding: str, probability: float, threshold: float | None, thresholds: dict | None) -> str:
    """The overlay's first line: the finding, the probability and the threshold(s) it was read against."""
    if thresholds is None:  # the single-threshold caption
        verdict = "FRACTURE suspected" if finding == "fracture" else "no fracture"
        return f"{verdict}  p={probability:.2f} (threshold {threshold:.2f})"
    points = f"suspicious {thresholds['suspicious']:.2f}, fracture {thresholds['fracture']:.2f}"
    verdict = {"fracture": "FRACTURE", "suspicious": "SUSPICIOUS"}.get(finding, finding)
    return f"{verdict}  p={probability:.2f} ({points})"


def overlay(
    image01: np.ndarray,
    box=None,
    probability: float | None = None,
    fracture: bool | None = None,
    threshold: float | None = None,
    heatmap: np.ndarray | None = None,
    region: np.ndarray | None = None,
    note: str = "",
    finding: str | None = None,
    thresholds: dict[str, float] | None = None,
) -> np.ndarray:
    """The X-ray with the nasal bone box, the finding with its probability and (if flagged) the region drawn on it.

    ``finding`` (``"fracture"``, ``"suspicious"``, ``"no fracture"``, ``"not assessable"``; None: from ``fracture``)
    sets the box: solid red for a fracture, dashed orange for suspicious, solid green for no fracture. For a
    fracture or suspicious finding ``heatmap`` (same grid, [0, 1]) is blended in red inside the box and ``region``
    (bool) outlined in yellow. ``thresholds`` (the two operating points) are named in the caption. Returns
    ``(rows, cols, 3)`` uint8 on the input's pixel grid.
    """
    if finding is None:
        finding = "not assessable" if fracture is None else "fracture" if fracture else "no fracture"
    flagged = finding in ("fracture", "suspicious")
    rgb = to_rgb(image01)
    width = max(1, round(min(image01.shape) / 300))
    # the heatmap and the region's outline change only the pixels around them: blended there alone
    area = _extent(heatmap, region, width + 1) if flagged else None
    if area is not None:
        part = rgb[area].astype(np.float32)
        if heatmap is not None:
            alpha = 0.45 * np.clip(heatmap[area], 0, 1)[..., None]
            part = part * (1 - alpha) + np.array(RED, np.float32) * alpha
        if region is not None and region.any():
            edge = binary_dilation(region[area], iterations=width) & ~region[area]
            part[edge] = YELLOW
        rgb[area] = np.clip(part, 0, 255).astype(np.uint8)
    im = Image.fromarray(rgb)
    draw = ImageDraw.Draw(im)
    size = max(12, round(min(image01.shape) / 28))
    colour = COLOURS.get(finding, CYAN) if probability is not None else CYAN
    if box is not None:
        if finding == "suspicious":
            dashed_rectangle(draw, box, colour, max(2, size // 8), dash=max(4, size // 2))
        else:
            draw.rectangle([float(v) for v in box], outline=colour, width=max(2, size // 8))
    text = (
        (note or "no nasal bone found")
        if probability is None
        else _caption(finding, probability, threshold, thresholds)
    )
    lines = [text, "research use only - not a diagnosis"]
    y = 4
    for line, fill in zip(lines, (colour, (200, 200, 200)), strict=True):
        draw.rectangle([4, y, 8 + draw.textlength(line, font=_font(size)), y + size + 4], fill=(0, 0, 0))
        draw.text((6, y + 1), line, fill=fill, font=_font(size))
        y += size + 8
        size = max(10, size * 2 // 3)
    return np.asarray(im)
