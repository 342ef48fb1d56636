"""Detector and display: quantum noise, exposure/gamma/tone lookup table, collimation bands, burned-in markers."""

from __future__ import annotations

import math

import numpy as np

from .font import text_bitmap
from .geometry import ramp
from .params import Array, View
from .site import tone_curve

LUT_N, LUT_MAX = 8192, 16.0


def detector(att: Array, view: View, rng: np.random.Generator, top: float) -> Array:
    """Quantum noise (in the log domain: std = 1/sqrt(photons * exp(-A))) and the display mapping."""
    grid = np.linspace(0, LUT_MAX, LUT_N)  # attenuation at the detector (after the energy factor)
    norm = 1 - math.exp(-view.exposure * view.window * top)
    shown = np.clip((1 - np.exp(-view.exposure * grid)) / norm, 0, 1) ** view.gamma
    if view.tone is not None:
        shown = tone_curve(shown, *view.tone)
    # quantum noise: std of the log signal is 1/sqrt(photons * exp(-A)); propagate through the display slope
    std_a = np.minimum(np.exp(0.5 * grid) * math.sqrt(12.0 / view.photons), 0.8)  # x sqrt(12): uniform noise
    slope = np.gradient(shown, grid)
    std = slope * std_a + 0.004 * math.sqrt(12)
    lut_lo, lut_sd = (shown - 0.5 * std).astype(np.float32), std.astype(np.float32)
    idx = np.clip(att * np.float32(view.energy * (LUT_N - 1) / LUT_MAX) + np.float32(0.5), 0, LUT_N - 1)
    idx = idx.astype(np.int32)
    img = lut_sd[idx]
    img *= rng.random(att.shape, dtype=np.float32)
    img += lut_lo[idx]
    return img


def collimate(img: Array, view: View, keep: tuple[float, float, float, float]) -> None:
    """Dark or bright bands on 0-2 edges, never covering ``keep`` (x0, y0, x1, y1)."""
    size = img.shape[0]
    pos = np.arange(size, dtype=np.float32)
    for edge, frac, value in view.collimation:
        w = frac * size
        if edge == "left":
            w = min(w, keep[0] - 4)
            band = ramp(w - pos, 3.0)[None, :]
        elif edge == "right":
            w = min(w, size - keep[2] - 4)
            band = ramp(pos - (size - w), 3.0)[None, :]
        elif edge == "top":
            w = min(w, keep[1] - 4)
            band = ramp(w - pos, 3.0)[:, None]
        else:
            w = min(w, size - keep[3] - 4)
            band = ramp(pos - (size - w), 3.0)[:, None]
        if w > 1:
            img *= 1 - band
            img += band * np.float32(value)


def burn_markers(img: Array, view: View, rng: np.random.Generator, keep: tuple[float, float, float, float]) -> None:
    """Burned-in side letter and a short label in free corners."""
    size = img.shape[0]
    unit = max(size // 170, 1)
    items = [text_bitmap(str(rng.choice(["L", "R"])), unit * int(rng.integers(2, 4)))]
    if view.markers >= 1:
        chars = list("0123456789") + ["A", "T", "-", " "]
        items.append(text_bitmap("".join(rng.choice(chars, size=int(rng.integers(3, 8)))), unit))
    if view.markers >= 2:
        items.append(text_bitmap("".join(rng.choice(list("0123456789"), size=4)), unit))
    value = 1.0 if rng.random() < 0.8 else 0.05
    corners = list(rng.permutation(4))
    margin = int(size * 0.03)
    for bm in items:
        h, w = bm.shape
        for _ in range(len(corners)):
            corner = corners.pop(0)
            y0 = margin if corner < 2 else size - margin - h
            x0 = margin if corner % 2 == 0 else size - margin - w
            clear = x0 + w < keep[0] - 10 or x0 > keep[2] + 10 or y0 + h < keep[1] - 10 or y0 > keep[3] + 10
            if clear:
                img[y0 : y0 + h, x0 : x0 + w][bm] = value
                break
            corners.append(corner)
