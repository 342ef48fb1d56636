"""The nasal bone box: one convention for training, cropping and evaluation.

Coordinates are pixels of the image as displayed, the centre of pixel (row r, column c) being
(x=c, y=r). Boxes are ``[x1, y1, x2, y2]``.

The **landmark box** is the square centred on the midpoint of nasion and nasal bone tip whose side is
``(1 + 2 * margin)`` times the larger of the two landmarks' x and y extents: the box they span, grown
on every side by ``margin`` times that extent, then widened to a square. The square keeps the bone's
shape when the crop is resampled to the classifier's square input. ``squarify`` applies the same
widening to a detector's box.
"""

from __future__ import annotations

import numpy as np

DEFAULT_MARGIN = 0.3


def landmark_box(nasion, tip, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The square box around the two landmarks (``(x, y)`` pairs), as ``[x1, y1, x2, y2]``."""
    pts = np.array([nasion, tip], dtype=np.float64)
    centre = pts.mean(axis=0)
    extent = float(np.max(np.abs(pts[1] - pts[0])))
    half = 0.5 * extent * (1.0 + 2.0 * margin)
    return np.array([centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half])


def squarify(box) -> np.ndarray:
    """Widen the shorter side of ``box`` around its centre so that it is square."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half])


def clip_box(box, shape) -> np.ndarray:
    """Clip ``box`` to an image of ``shape`` ``(rows, cols)``."""
    h, w = shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([np.clip(x1, 0, w - 1), np.clip(y1, 0, h - 1), np.clip(x2, 0, w - 1), np.clip(y2, 0, h - 1)])


def box_iou(a, b) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def contains(box, points) -> bool:
    """Whether every ``(x, y)`` point lies inside ``box``."""
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    return bool(np.all((pts[:, 0] >= box[0]) & (pts[:, 0] <= box[2]) & (pts[:, 1] >= box[1]) & (pts[:, 1] <= box[3])))
