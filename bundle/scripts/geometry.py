"""Geometry of the nasal bone box: one convention for training, cropping, inference and evaluation.

Coordinates are pixels of the image as displayed, the centre of pixel (row r, column c) being
(x=c, y=r). Boxes are ``[x1, y1, x2, y2]``.

The **landmark box** is the square centred on the midpoint of nasion and nasal bone tip whose side is
``(1 + 2 * margin)`` times the larger of the two landmarks' x and y extents: the box they span, grown
on every side by ``margin`` times that extent, then widened to a square. The square keeps the bone's
shape when the crop is resampled to the classifier's square input. ``squarify`` applies the same
widening to a detector's box.

``crop_box`` resamples a box to a square crop and ``paste_back`` maps anything computed on a crop onto
the original pixel grid. ``Letterbox`` maps between an image and the detector's square model input.
This module is at the bottom of the package's import graph: it imports nothing from ``scripts``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates

DEFAULT_MARGIN = 0.3  # the thesis's box margin: 30% of the landmarks' extent on every side
PAD_VALUE = 114  # Ultralytics' letterbox grey


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


def crop_box(image: np.ndarray, box, size: int, order: int = 1) -> np.ndarray:
    """Resample the ``box`` region of a ``(rows, cols)`` image to ``(size, size)``; outside the image is 0."""
    x1, y1, x2, y2 = (float(v) for v in box)
    t = (np.arange(size) + 0.5) / size
    xs = x1 - 0.5 + t * (x2 - x1)
    ys = y1 - 0.5 + t * (y2 - y1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return map_coordinates(image, [yy, xx], order=order, mode="constant", cval=0.0).astype(np.float32)


def paste_back(crop_map: np.ndarray, box, shape, order: int = 1) -> np.ndarray:
    """Map a ``(size, size)`` array computed on a crop back onto an image of ``shape``; 0 outside the box."""
    size = crop_map.shape[-1]
    h, w = shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    out = np.zeros((h, w), dtype=np.float32)
    c0, c1 = max(0, int(np.floor(x1))), min(w, int(np.ceil(x2)) + 1)
    r0, r1 = max(0, int(np.floor(y1))), min(h, int(np.ceil(y2)) + 1)
    if c1 <= c0 or r1 <= r0:
        return out
    cols = (np.arange(c0, c1) + 0.5 - x1) * size / (x2 - x1) - 0.5
    rows = (np.arange(r0, r1) + 0.5 - y1) * size / (y2 - y1) - 0.5
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    inside = (rr >= -0.5) & (rr <= size - 0.5) & (cc >= -0.5) & (cc <= size - 0.5)
    vals = map_coordinates(crop_map.astype(np.float32), [rr, cc], order=order, mode="nearest")
    out[r0:r1, c0:c1] = np.where(inside, vals, 0.0)
    return out


@dataclass(frozen=True)
class Letterbox:
    """How an image of ``shape`` was resized by ``(sx, sy)`` and padded by ``(left, top)`` to ``imgsz``.

    As Ultralytics does: longest side to ``imgsz``, centred, padded with grey ``PAD_VALUE``. Model-input
    boxes are in Ultralytics' pixel-edge coordinates (input pixel ``c`` spans ``[c, c + 1]``); original
    boxes follow this module's convention (pixel ``c`` spans ``[c - 0.5, c + 0.5]``).
    """

    shape: tuple[int, int]
    imgsz: int
    sx: float
    sy: float
    left: int
    top: int

    @classmethod
    def fit(cls, shape, imgsz: int) -> Letterbox:
        """The letterbox of an image of ``shape`` (rows, cols) into ``imgsz x imgsz``."""
        h, w = int(shape[0]), int(shape[1])
        r = imgsz / max(h, w)
        nw, nh = max(1, round(w * r)), max(1, round(h * r))
        return cls((h, w), int(imgsz), nw / w, nh / h, (imgsz - nw) // 2, (imgsz - nh) // 2)

    @property
    def resized(self) -> tuple[int, int]:
        """``(rows, cols)`` of the resized image inside the square."""
        return round(self.shape[0] * self.sy), round(self.shape[1] * self.sx)

    def to_input(self, box) -> np.ndarray:
        """Original ``[x1, y1, x2, y2]`` -> model-input coordinates."""
        b = np.asarray(box, dtype=np.float64) + 0.5
        return b * [self.sx, self.sy, self.sx, self.sy] + [self.left, self.top, self.left, self.top]

    def to_original(self, box) -> np.ndarray:
        """Model-input ``[x1, y1, x2, y2]`` -> original pixel coordinates."""
        b = np.asarray(box, dtype=np.float64) - [self.left, self.top, self.left, self.top]
        return b / [self.sx, self.sy, self.sx, self.sy] - 0.5

    def apply(self, image01: np.ndarray) -> np.ndarray:
        """The ``(imgsz, imgsz)`` uint8 model input of a ``(rows, cols)`` image in [0, 1]."""
        import cv2

        img = np.round(np.clip(image01, 0.0, 1.0) * 255).astype(np.uint8)
        nh, nw = self.resized
        if (nh, nw) != img.shape:
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        out = np.full((self.imgsz, self.imgsz), PAD_VALUE, dtype=np.uint8)
        out[self.top : self.top + nh, self.left : self.left + nw] = img
        return out
