"""Pixel grid of a view in patient millimetres, and the analytic shape primitives evaluated on it."""

from __future__ import annotations

import math

import numpy as np

from .params import REF_MM, Array, View


class Frame:
    """Patient-mm coordinates of a (possibly coarser) pixel grid of one view.

    Grid index ``j`` sits at full-resolution pixel position ``(j + 0.5) * step - 0.5`` (the pixel-centre
    convention of bilinear resizing), so a coarse grid upsampled with PIL lines up with the fine one.
    """

    def __init__(self, view: View, size: int, n: int | None = None) -> None:
        self.size, self.n = size, n or size
        self.step = size / self.n
        c, s = math.cos(view.theta), math.sin(view.theta)
        self.cs = (c, s)
        self.rot = np.array([[c, -s], [s, c]])
        self.k = view.scale
        self.centre = np.asarray(view.centre, dtype=float)
        self._full: tuple[Array, Array] | None = None

    def to_px(self, pts: Array) -> Array:
        """Patient mm (..., 2) -> full-resolution pixel (x, y)."""
        pts = np.asarray(pts, dtype=float)
        return (pts - REF_MM) @ self.rot.T * self.k + self.centre

    def coords(self, sl: tuple[slice, slice] | None = None) -> tuple[Array, Array]:
        """Patient (U, V) in mm of the grid cells in ``sl`` (rows, cols); the whole grid if None."""
        if sl is None:
            if self._full is None:
                self._full = self.coords((slice(0, self.n), slice(0, self.n)))
            return self._full
        if self._full is not None:
            return self._full[0][sl], self._full[1][sl]
        rows, cols = sl
        c, s = self.cs
        inv, step = 1.0 / self.k, self.step
        cx, cy = float(self.centre[0]), float(self.centre[1])
        y = ((np.arange(rows.start, rows.stop, dtype=np.float64) + 0.5) * step - 0.5 - cy) * inv
        x = ((np.arange(cols.start, cols.stop, dtype=np.float64) + 0.5) * step - 0.5 - cx) * inv
        y, x = y.astype(np.float32)[:, None], x.astype(np.float32)[None, :]
        return c * x + s * y + REF_MM[0], -s * x + c * y + REF_MM[1]

    def box(self, x0: float, x1: float, y0: float, y1: float, pad_px: float = 0.0) -> tuple[slice, slice] | None:
        """Grid slices (rows, cols) covering a patient-mm rectangle, or None if off the grid."""
        corners = self.to_px(np.array([[x0, y0], [x0, y1], [x1, y0], [x1, y1]]))
        lo = (corners.min(0) - pad_px + 0.5) / self.step - 0.5
        hi = (corners.max(0) + pad_px + 0.5) / self.step - 0.5
        c0, r0 = np.floor(lo).astype(int) - 1
        c1, r1 = np.ceil(hi).astype(int) + 2
        r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, self.n), min(c1, self.n)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def around(self, cx: float, cy: float, rx: float, ry: float) -> tuple[slice, slice] | None:
        return self.box(cx - rx, cx + rx, cy - ry, cy + ry)


def ramp(x: Array, width: float) -> Array:
    """Soft step from 0 (x < -width/2) to 1 (x > width/2)."""
    return np.clip(x * (1.0 / width) + 0.5, 0.0, 1.0)


def chord(u: Array, v: Array, a: float, b: float) -> Array:
    """Path length (in units of the lateral semi-axis) through an ellipsoid, viewed laterally."""
    return 2.0 * np.sqrt(np.clip(1.0 - (u * (1 / a)) ** 2 - (v * (1 / b)) ** 2, 0.0, None))


def local(u: Array, v: Array, cx: float, cy: float, ang: float = 0.0) -> tuple[Array, Array]:
    c, s = math.cos(ang), math.sin(ang)
    du, dv = u - cx, v - cy
    return c * du + s * dv, -s * du + c * dv


def polyline(u: Array, v: Array, pts: Array) -> tuple[Array, Array]:
    """Distance to a polyline and the arc-length parameter of the nearest point."""
    best = np.full(u.shape, np.inf, dtype=np.float32)
    arc = np.zeros(u.shape, dtype=np.float32)
    start = 0.0
    for (x0, y0), (x1, y1) in zip(pts[:-1].tolist(), pts[1:].tolist(), strict=True):
        sx, sy = x1 - x0, y1 - y0
        length = math.hypot(sx, sy)
        du, dv = u - x0, v - y0
        t = np.clip((du * sx + dv * sy) * (1 / length**2), 0, 1)
        du -= t * sx
        dv -= t * sy
        d2 = du * du + dv * dv
        closer = d2 < best
        np.copyto(best, d2, where=closer)
        np.copyto(arc, t * length + start, where=closer)
        start += length
    return np.sqrt(best), arc
