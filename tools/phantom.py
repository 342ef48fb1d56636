"""Procedural phantom of lateral (profile, facing right) head X-rays with and without nasal bone fractures.

Anatomy lives in a patient frame in millimetres (origin at the centre of the skull vault, x anterior,
y inferior). Each view maps that frame to pixels with a similarity transform (scale, rotation,
translation) and evaluates every structure analytically on the pixel grid, so landmarks follow the
transform exactly. Structures add soft-tissue and bone path lengths; the detector sees
``exp(-attenuation)`` (Beer-Lambert), is blurred and gets quantum noise, and the display shows
``1 - signal**exposure`` with a gamma (MONOCHROME2: bright = dense).

A fracture is a thin lucent line across the nasal bone (optionally with step-off, angulation or a
second line). Sutures and neurovascular grooves, which fool human readers, appear in every image
independently of the label. The random streams of anatomy, confounders, fracture and acquisition are
separate, so ``render_patient(s, True)`` and ``render_patient(s, False)`` differ only by the fracture.

Run: ``PYTHONPATH=bundle python -m tools.phantom --out data/phantom --n 1000``.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.interpolate import PchipInterpolator

DEFAULT_FORMATS: dict[str, float] = {  # file kind (scripts.imageio.KINDS) -> share of images
    "png8": 0.6,
    "png16": 0.1,
    "dcm": 0.1,
    "dcm_mono1": 0.05,
    "dcm_rle": 0.05,
    "nii": 0.1,
}
CSV_COLUMNS = ("image", "patient_id", "label", "nasion_x", "nasion_y", "tip_x", "tip_y", "fracture_mask")
FOV_MM = 250.0  # field of view at scale 1 (about 2 px/mm at 512 px)
MU_SOFT = 0.02  # attenuation per mm of soft tissue
MU_BONE = 0.05  # extra attenuation per mm of bone path
REF_MM = (8.0, 40.0)  # patient point placed near the image centre (middle of the head's extent)
PROFILE_Y0, PROFILE_DY, PROFILE_N = -140.0, 0.25, 1800  # lookup table of the face profile x(y)
FRACTURE_KINDS = ("line", "step", "angulated", "double")
Array = np.ndarray


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


@dataclass
class Line:
    """A thin lucent line in nasal-bone coordinates: centre at ``s`` (mm along the bone)."""

    s: float
    angle: float  # angle of the line's normal from the bone axis (rad); 0 = straight across the bone
    width: float  # mm
    depth: float  # fraction of bone removed at the line centre
    jag_amp: float = 0.0  # mm, zig-zag amplitude
    jag_period: float = 1.0  # mm


@dataclass
class Groove:
    """A faint lucent line running roughly along the bone."""

    s0: float
    s1: float
    d0: float  # offset from the centre line, as a fraction of the local half-thickness
    slope: float  # change of d per mm along the bone
    width: float
    depth: float


@dataclass
class Fracture:
    """Fracture lines and the displacement of the fragment distal to the last line."""

    kind: str
    lines: list[Line]
    step: float = 0.0  # mm, distal fragment shifted along the anterior normal (negative = depressed)
    angle: float = 0.0  # rad, distal fragment rotated about the fracture point (positive = tip down/back)


@dataclass
class Anatomy:
    """One patient's geometry (mm, patient frame) and its confounders."""

    vault: tuple[float, float, float, float]  # outer semi-axes a (AP), b (vertical), c (lateral), thickness
    nasion: tuple[float, float]
    phi: float  # nasal bone direction, rad from vertical towards anterior
    length: float
    h0: float  # half-thickness at the root
    h1: float  # half-thickness at the tip
    bulge: float  # centre-line bow towards anterior at mid-length (mm)
    rho: float  # bone path length through the paired nasal bones (mm)
    face: PchipInterpolator | None = None  # soft-tissue profile x(y) without the nose
    nose: PchipInterpolator | None = None  # ... with the nose
    profile_tables: tuple[Array, Array] | None = field(default=None, repr=False)  # both sampled on PROFILE_* grid
    menton_y: float = 0.0
    soft: dict[str, float] = field(default_factory=dict)
    bones: dict[str, float] = field(default_factory=dict)
    nf_suture: Line | None = None  # nasofrontal suture
    nm_suture: tuple[float, float, float, float] | None = None  # nasomaxillary suture: s0, s1, width, depth
    grooves: list[Groove] = field(default_factory=list)  # neurovascular grooves
    fracture: Fracture | None = None

    @property
    def axis(self) -> tuple[Array, Array]:
        """Unit vectors: along the bone (root to tip) and its anterior normal."""
        u = np.array([math.sin(self.phi), math.cos(self.phi)])
        n = np.array([math.cos(self.phi), -math.sin(self.phi)])
        return u, n

    @property
    def tip(self) -> Array:
        """Bone tip (rhinion) before any fracture displacement."""
        u, _ = self.axis
        return np.asarray(self.nasion) + self.length * u

    def centre_point(self, s: float) -> Array:
        """Point of the centre line at ``s`` mm along the bone."""
        u, n = self.axis
        t = s / self.length
        return np.asarray(self.nasion) + s * u + self.bulge * 4 * t * (1 - t) * n


@dataclass
class View:
    """One acquisition: patient mm -> pixel similarity transform and detector/display settings."""

    scale: float  # px per mm
    theta: float  # rad
    centre: tuple[float, float]  # pixel position of REF_MM
    energy: float
    exposure: float  # display: 1 - exp(-exposure * A), normalised to 1 at A = window * max(A)
    window: float
    gamma: float
    compress: float
    blur: float
    photons: float
    texture: float
    collimation: list[tuple[str, float, float]]  # (edge, width fraction, value)
    markers: int


@dataclass
class PhantomView:
    """A rendered view with its ground truth (pixel coordinates: x = column, y = row)."""

    image: Array
    nasion: tuple[float, float]
    tip: tuple[float, float]
    mask: Array
    label: int
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Random patient geometry with the face profile built around the nasal bone."""
    a, b = _u(rng, 88, 98), _u(rng, 74, 84)
    vault = (a, b, _u(rng, 66, 74), _u(rng, 5.5, 8.0))
    beta = math.radians(_u(rng, 27, 33))
    nasion = (a * math.cos(beta) + _u(rng, -1, 2), b * math.sin(beta) + _u(rng, -2, 2))
    phi = math.radians(_u(rng, 28, 42))
    length = _u(rng, 19, 27)
    anat = Anatomy(
        vault=vault,
        nasion=nasion,
        phi=phi,
        length=length,
        h0=_u(rng, 1.1, 1.6),
        h1=_u(rng, 0.45, 0.7),
        bulge=_u(rng, -0.6, 1.4),
        rho=_u(rng, 22, 34),
    )
    _sample_profile(rng, anat)
    anat.bones = {
        "sinus_w": _u(rng, 4, 8),
        "sinus_h": _u(rng, 8, 14),
        "orbit_r": _u(rng, 15, 19),
        "palate_y": _u(rng, 52, 58),
        "teeth": _u(rng, 0.8, 1.2),
        "mand_dx": _u(rng, -5, 5),
        "mand_dy": _u(rng, -5, 5),
        "teeth_phase": _u(rng, 0.2, 0.8),
        "spine_tilt": _u(rng, -0.05, 0.2),
        "spine_x": _u(rng, -42, -32),
        "fp_w": _u(rng, 3, 5.5),
        "fp_rho": _u(rng, 0.12, 0.25),
        "glabella": _u(rng, 2, 6),
        "phase": _u(rng, 0, 2 * math.pi),
    }
    return anat


def _sample_profile(rng: np.random.Generator, anat: Anatomy) -> None:
    """Soft-tissue profile x(y) of the face with and without the nose, as monotone splines."""
    nx, ny = anat.nasion
    a, b = anat.vault[0] + 6, anat.vault[1] + 6
    u, n = anat.axis
    tip = anat.tip
    skin = _u(rng, 2.5, 4.5)
    sn = np.array([nx + _u(rng, 4, 10), ny + _u(rng, 46, 54)])  # subnasale
    prn = sn + np.array([_u(rng, 17, 24), _u(rng, -10, -6)])  # pronasale
    forehead = [(a * math.cos(t), b * math.sin(t)) for t in np.radians([-60, -40, -20, 0, 12])]
    glabella = (nx + _u(rng, 6, 10), ny - _u(rng, 10, 14))
    s_nasion = (nx + _u(rng, 5, 7), ny + 1.0)
    dorsum = [tuple(anat.centre_point(f * anat.length) + (anat.h0 + skin) * n) for f in (0.45, 1.0)]
    dorsum.append(tuple(tip + 0.5 * (prn - tip) + np.array([skin, -1.0])))
    lips = [
        (sn[0] + _u(rng, 1, 4), sn[1] + _u(rng, 10, 14)),  # labrale superius
        (sn[0] + _u(rng, -3, 0), sn[1] + _u(rng, 20, 23)),  # stomion
        (sn[0] + _u(rng, -1, 3), sn[1] + _u(rng, 30, 34)),  # labrale inferius
        (sn[0] + _u(rng, -9, -5), sn[1] + _u(rng, 40, 44)),  # labiomental fold
        (sn[0] + _u(rng, -4, 3), sn[1] + _u(rng, 55, 60)),  # pogonion
        (sn[0] + _u(rng, -14, -8), sn[1] + _u(rng, 68, 72)),  # menton
    ]
    neck = [(lips[-1][0] - 60, lips[-1][1] + 60), (lips[-1][0] - 62, lips[-1][1] + 160)]
    upper = [*forehead, glabella, s_nasion]
    # without the nose: eyelids and cheeks lie well behind the nasal dorsum
    cheeks = [(nx - _u(rng, 8, 13), ny + 8), (sn[0] - _u(rng, 12, 18), sn[1] - 20), (sn[0] - 5, sn[1] + 2)]
    face_pts = [*forehead, glabella, *cheeks, *lips, *neck]
    nose_pts = [*upper, *dorsum, tuple(prn), (prn[0] - 4, prn[1] + 4), (sn[0], sn[1]), *lips, *neck]
    anat.face = _monotone_spline(face_pts)
    anat.nose = _monotone_spline(nose_pts)
    anat.menton_y = lips[-1][1]
    ys = PROFILE_Y0 + PROFILE_DY * np.arange(PROFILE_N)
    anat.profile_tables = (anat.face(ys).astype(np.float32), anat.nose(ys).astype(np.float32))
    anat.soft = {
        "face_w": _u(rng, 120, 140),
        "nose_w": _u(rng, 26, 36),
        "nose_r": _u(rng, 6, 11),
        "scalp": 6.0,
        "airway": _u(rng, 12, 25),
    }


def _monotone_spline(points: list[tuple[float, float]]) -> PchipInterpolator:
    pts = sorted((float(y), float(x)) for x, y in points)
    ys, xs = zip(*pts, strict=True)
    ys = np.maximum.accumulate(np.asarray(ys) + 1e-3 * np.arange(len(ys)))
    return PchipInterpolator(ys, np.asarray(xs), extrapolate=True)


def _sample_confounders(rng: np.random.Generator, anat: Anatomy) -> None:
    """Sutures and grooves with random presence and strength, independent of the label."""
    L = anat.length
    if rng.random() < 0.85:
        anat.nf_suture = Line(
            s=_u(rng, -0.12, 0.1) * L,
            angle=math.radians(_u(rng, -30, 30)),
            width=_u(rng, 0.75, 1.6),
            depth=_u(rng, 0.55, 1.0),
            jag_amp=_u(rng, 0.2, 0.6),
            jag_period=_u(rng, 0.8, 1.6),
        )
    if rng.random() < 0.8:
        anat.nm_suture = (_u(rng, 0.0, 0.3) * L, _u(rng, 0.7, 1.1) * L, _u(rng, 0.5, 1.2), _u(rng, 0.4, 0.9))
    anat.grooves = []
    if rng.random() < 0.75:
        for _ in range(int(rng.integers(1, 4))):
            s0 = _u(rng, 0.0, 0.5) * L
            anat.grooves.append(
                Groove(
                    s0=s0,
                    s1=s0 + _u(rng, 0.3, 0.6) * L,
                    d0=_u(rng, -0.6, 0.6),
                    slope=math.tan(math.radians(_u(rng, -8, 8))),
                    width=_u(rng, 0.4, 0.9),
                    depth=_u(rng, 0.2, 0.6),
                )
            )


def _fracture_line(rng: np.random.Generator, s: float) -> Line:
    return Line(
        s=s,
        angle=math.radians(_u(rng, -35, 35)),
        width=_u(rng, 1.5, 3.2) / 2.05,
        depth=_u(rng, 0.7, 1.0),
        jag_amp=_u(rng, 0.0, 0.35),
        jag_period=_u(rng, 0.8, 2.0),
    )


def _sample_fracture(rng: np.random.Generator, anat: Anatomy) -> Fracture:
    """One of the fracture variants, located 20-90% along the bone."""
    L = anat.length
    kind = FRACTURE_KINDS[int(rng.integers(len(FRACTURE_KINDS)))]
    if kind == "double":
        s1, s2 = sorted((_u(rng, 0.2, 0.55) * L, _u(rng, 0.6, 0.9) * L))
        lines = [_fracture_line(rng, s1), _fracture_line(rng, s2)]
    else:
        lines = [_fracture_line(rng, _u(rng, 0.2, 0.9) * L)]
    frac = Fracture(kind=kind, lines=lines)
    if kind == "step":
        frac.step = float(rng.choice([-1.0, 1.0])) * _u(rng, 0.6, 1.8)
    elif kind == "angulated":
        frac.angle = math.radians(_u(rng, 5, 16))
        frac.step = -_u(rng, 0.0, 0.6)
    return frac


def _sample_view(rng: np.random.Generator, base: dict[str, float], size: int) -> View:
    """Acquisition settings: the patient's pose plus per-view jitter, exposure, noise, borders, markers."""
    scale = base["scale"] * _u(rng, 0.97, 1.03) * size / FOV_MM
    theta = base["theta"] + math.radians(_u(rng, -2.5, 2.5))
    shift = (base["dx"] + _u(rng, -0.03, 0.03), base["dy"] + _u(rng, -0.03, 0.03))
    n_edges = int(rng.choice([0, 1, 2], p=[0.4, 0.35, 0.25]))
    edges = rng.choice(["top", "bottom", "left", "right"], size=n_edges, replace=False)
    coll = [
        (str(e), _u(rng, 0.02, 0.1), _u(rng, 0.0, 0.08) if rng.random() < 0.5 else _u(rng, 0.85, 1.0)) for e in edges
    ]
    return View(
        scale=scale,
        theta=theta,
        centre=(size * (0.5 + shift[0]), size * (0.5 + shift[1])),
        energy=_u(rng, 0.85, 1.15),
        exposure=_u(rng, 0.22, 0.45),
        window=_u(rng, 0.85, 1.1),
        gamma=_u(rng, 0.75, 1.3),
        compress=_u(rng, 0.0, 0.5),
        blur=_u(rng, 0.5, 1.5),
        photons=float(np.exp(rng.uniform(np.log(300), np.log(3000)))),
        texture=_u(rng, 0.05, 0.2),
        collimation=coll,
        markers=int(rng.integers(0, 3)),
    )


# ----------------------------------------------------------------------------------------------
# Geometry helpers
# ----------------------------------------------------------------------------------------------


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


def _ramp(x: Array, width: float) -> Array:
    """Soft step from 0 (x < -width/2) to 1 (x > width/2)."""
    return np.clip(x * (1.0 / width) + 0.5, 0.0, 1.0)


def _chord(u: Array, v: Array, a: float, b: float) -> Array:
    """Path length (in units of the lateral semi-axis) through an ellipsoid, viewed laterally."""
    return 2.0 * np.sqrt(np.clip(1.0 - (u * (1 / a)) ** 2 - (v * (1 / b)) ** 2, 0.0, None))


def _local(u: Array, v: Array, cx: float, cy: float, ang: float = 0.0) -> tuple[Array, Array]:
    c, s = math.cos(ang), math.sin(ang)
    du, dv = u - cx, v - cy
    return c * du + s * dv, -s * du + c * dv


def _polyline(u: Array, v: Array, pts: Array) -> tuple[Array, Array]:
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


# ----------------------------------------------------------------------------------------------
# Structures (each adds soft-tissue or bone path length in mm on a sub-box of the view)
# ----------------------------------------------------------------------------------------------


def _soft_tissue(anat: Anatomy, fr: Frame) -> Array:
    """Head, face, nose and neck soft tissue (mm of path), minus the airway."""
    U, V = fr.coords()
    a, b, c, _ = anat.vault
    sc = anat.soft
    head = (c * 1.05) * _chord(U, V - 2, a + sc["scalp"], b + sc["scalp"])
    idx = np.clip(((V - PROFILE_Y0) * (1 / PROFILE_DY)).astype(np.int32), 0, PROFILE_N - 1)
    face_x, nose_x = anat.profile_tables[0][idx], anat.profile_tables[1][idx]
    face = sc["face_w"] * np.sqrt(np.clip((face_x - U) * (1 / 40.0), 0, 1))
    nose = sc["nose_w"] * np.sqrt(np.clip((nose_x - U) * (1 / sc["nose_r"]), 0, 1))
    nx, ny = anat.nasion
    lower = np.maximum(face, nose) * _ramp(V - (ny - 8), 40) * _ramp(anat.menton_y - V, 5)
    neck_front = (nx - 40) - 0.15 * (V - anat.menton_y)
    neck = 110 * np.sqrt(np.clip((neck_front - U) * (1 / 35.0), 0, 1)) * _ramp(V - anat.menton_y + 30, 20)
    soft = np.maximum(head, np.maximum(lower, neck) * _ramp(U + 85, 25))
    air = np.array([[nx - 72, ny + 35], [nx - 92, ny + 70], [nx - 100, ny + 115], [nx - 102, ny + 220]])
    sl = fr.box(nx - 115, nx - 55, ny + 25, ny + 230)
    if sl is not None:
        d, _ = _polyline(*fr.coords(sl), air)
        soft[sl] -= sc["airway"] * np.clip(1.0 - d * (1 / 7.0), 0, 1)
    return soft


def _vault(anat: Anatomy, fr: Frame, bone: Array) -> None:
    """Skull vault as an ellipsoidal shell, fading out below the skull base line."""
    a, b, c, t = anat.vault
    U, V = fr.coords()
    shell = c * _chord(U, V, a, b) - (c - t) * _chord(U, V, a - t, b - t)
    nx, ny = anat.nasion
    cut = (ny + 12) + (nx - U) * 0.15  # skull base line, lower at the back
    base = np.clip(1 - np.abs(V - cut + 8) * (1 / 14), 0, 1) * _ramp(U + a - 25, 30) * _ramp((nx - 25) - U, 20)
    bone += shell * _ramp(cut - V, 36) + 10 * base


def _frontal(anat: Anatomy, fr: Frame, bone: Array) -> None:
    """Glabella and the frontal sinus (lucent with a thin sclerotic rim)."""
    nx, ny = anat.nasion
    bn = anat.bones
    sl = fr.around(nx - 10, ny - 15, 25, 30)
    if sl is None:
        return
    U, V = fr.coords(sl)
    gu, gv = _local(U, V, nx - 2, ny - 12, -0.3)
    b = (2.5 * bn["glabella"]) * _chord(gu, gv, 6, 11)
    su, sv = _local(U, V, nx - 9, ny - 19, 0.25)
    r = np.sqrt((su * (1 / bn["sinus_w"])) ** 2 + (sv * (1 / bn["sinus_h"])) ** 2)
    b += -10 * np.clip(1.2 - r, 0, 0.6) + 6 * np.clip(1 - np.abs(r - 1.05) * 8, 0, 1)
    bone[sl] += b


def _paint(fr: Frame, out: Array, box: tuple[float, float, float, float], fn) -> None:
    """Add ``fn(U, V)`` on the grid cells covering the patient-mm ``box`` (x0, x1, y0, y1)."""
    sl = fr.box(*box)
    if sl is not None:
        out[sl] += fn(*fr.coords(sl))


def _face_bones(anat: Anatomy, fr: Frame, bone: Array) -> None:
    """Orbit rim, orbital roof, petrous ridge, sella, maxilla with its sinus, zygoma, hard palate, teeth."""
    nx, ny = anat.nasion
    bn = anat.bones
    orb = bn["orbit_r"]

    def orbit(U: Array, V: Array) -> Array:
        ou, ov = U - (nx - 24), V - (ny + 14)
        r = np.sqrt(ou * ou + ov * ov)
        side = np.clip((-ou + 0.3 * ov) / np.maximum(r, 1), 0, 1)
        return 9 * np.clip(1 - np.abs(r - orb) * (1 / 1.6), 0, 1) * side

    def roof(U: Array, V: Array) -> Array:
        line = np.clip(1 - np.abs(V - (ny - 2) - 0.08 * (nx - U)) * (1 / 1.2), 0, 1)
        return 6 * line * _ramp(U - (nx - 70), 8) * _ramp((nx - 12) - U, 6)

    def petrous(U: Array, V: Array) -> Array:
        return 9 * _chord(*_local(U, V, nx - 105, ny + 8, 0.35), 26, 9) + 6 * _chord(
            *_local(U, V, nx - 112, ny + 22, 0.1), 12, 10
        )

    def sella(U: Array, V: Array) -> Array:
        su, sv = U - (nx - 75), V - (ny - 10)
        return 10 * np.clip(1 - np.abs(np.sqrt(su * su + sv * sv) - 6) * (1 / 1.3), 0, 1) * _ramp(sv, 3)

    def maxilla(U: Array, V: Array) -> Array:
        return (
            6 * _chord(*_local(U, V, nx - 32, ny + 40, -0.15), 34, 21)
            - 4 * _chord(*_local(U, V, nx - 34, ny + 36, -0.1), 21, 13)
            + 7 * _chord(*_local(U, V, nx - 40, ny + 31, -0.35), 20, 6)
        )  # zygoma

    py = ny + bn["palate_y"]

    def palate(U: Array, V: Array) -> Array:
        return 11 * np.clip(1 - np.abs(V - py) * (1 / 2.2), 0, 1) * _ramp(U - (nx - 62), 4) * _ramp((nx + 6) - U, 4)

    _paint(fr, bone, (nx - 24 - orb - 2, nx - 24 + 4, ny + 14 - orb - 2, ny + 14 + orb + 2), orbit)
    _paint(fr, bone, (nx - 76, nx - 8, ny - 6, ny + 6), roof)
    _paint(fr, bone, (nx - 135, nx - 80, ny - 10, ny + 35), petrous)
    _paint(fr, bone, (nx - 83, nx - 67, ny - 12, ny - 2), sella)
    _paint(fr, bone, (nx - 68, nx + 4, ny + 15, ny + 62), maxilla)
    _paint(fr, bone, (nx - 66, nx + 10, py - 3, py + 3), palate)
    _paint(fr, bone, (nx - 62, nx + 1, py - 1, py + 43), lambda U, V: _teeth(U, V, nx, py + 21, bn))


def _teeth(U: Array, V: Array, nx: float, occ: float, bn: dict[str, float]) -> Array:
    """Upper and lower teeth of both sides (overlapping, offset): enamel crowns and tapering roots."""
    ad = np.abs(V - occ)
    half = 0.4 - np.clip(ad - 8.0, 0, None) * 0.016
    crown = _ramp(ad - 0.8, 1.2) * _ramp(8.0 - ad, 1.5)
    root = _ramp(ad - 7.5, 1) * _ramp(20 - ad, 6)
    band = _ramp(U - (nx - 58), 4) * _ramp((nx - 1) - U, 3)
    out = np.zeros_like(U)
    for side, (width, phase) in enumerate(((7.2, 0.0), (7.6, bn["teeth_phase"]))):
        tu = (U - (nx - 58)) * (1 / width) + phase
        k = np.floor(tu)
        f = tu - k - 0.5
        var = 0.75 + 0.25 * np.sin(k * 2.7 + (bn["phase"] + side))
        out += np.clip((half - np.abs(f)) * (8 + 6 * np.abs(f)), 0, 1) * var
    return (bn["teeth"] * 0.9) * out * (crown * 11 + root * 5) * band


def _mandible(anat: Anatomy, fr: Frame, bone: Array) -> None:
    """Mandible as a cortical tube along condyle - gonion - symphysis."""
    nx, ny = anat.nasion
    dx, dy = anat.bones["mand_dx"], anat.bones["mand_dy"]
    pts = np.array(
        [
            [nx - 95, ny + 8],
            [nx - 92, ny + 40],
            [nx - 85, ny + 86],
            [nx - 60, ny + 100],
            [nx - 25, ny + 110],
            [nx - 6, ny + 108],
            [nx - 3, ny + 88],
        ]
    ) + [dx, dy]
    sl = fr.box(pts[:, 0].min() - 16, pts[:, 0].max() + 16, pts[:, 1].min() - 16, pts[:, 1].max() + 16)
    if sl is None:
        return
    d, arc = _polyline(*fr.coords(sl), pts)
    hw = np.interp(arc, [0, 30, 80, 140, 175, 200], [6, 9, 10, 10, 13, 12]).astype(np.float32)
    d2 = d * d
    shell = 2 * np.sqrt(np.clip(hw * hw - d2, 0, None)) - 1.8 * np.sqrt(np.clip((hw - 2.5) ** 2 - d2, 0, None))
    bone[sl] += shell


def _spine(anat: Anatomy, fr: Frame, bone: Array) -> None:
    """Cervical vertebral bodies (cortical boxes) and spinous processes, below the skull base."""
    bn = anat.bones
    top = (bn["spine_x"], 70.0)
    sl = fr.box(top[0] - 60, top[0] + 45, top[1] - 5, top[1] + 200)
    if sl is None:
        return
    U, V = fr.coords(sl)
    ang = math.atan(bn["spine_tilt"])
    c, s = math.cos(ang), math.sin(ang)
    du, dv = U - top[0], V - top[1]
    lu, lv = -s * du + c * dv, c * du + s * dv  # lu along the spine (down), lv towards anterior
    pitch = 19.0
    w = lu - np.floor(lu * (1 / pitch)) * pitch
    body = _ramp(w - 1, 1.5) * _ramp(15 - w, 1.5) * _ramp(lv + 8, 1.5) * _ramp(8 - lv, 1.5) * (lu > 0)
    rim = np.minimum(np.minimum(np.abs(w - 1), np.abs(15 - w)), np.minimum(np.abs(lv + 8), np.abs(8 - lv)))
    vert = body * (8 + 12 * np.clip(1 - rim * (1 / 1.5), 0, 1))
    proc = _ramp(lv + 42, 2) * _ramp(-14 - lv, 2) * np.clip(1 - np.abs(w - 9 + (lv + 14) * 0.25) * (1 / 3.5), 0, 1)
    bone[sl] += vert + 12 * proc * (lu > 5)


def _nasal_bone(anat: Anatomy, fr: Frame) -> tuple[tuple[slice, slice] | None, Array, Array]:
    """Nasal bone, frontal process of the maxilla, sutures, grooves and fracture on a sub-box.

    Returns the sub-box, its bone path length (mm) and the fracture mask (zeros for normals).
    """
    nx, ny = anat.nasion
    L = anat.length
    pts = np.array([anat.nasion, anat.tip])
    sl = fr.box(pts[:, 0].min() - 12, pts[:, 0].max() + 8, pts[:, 1].min() - 12, pts[:, 1].max() + 12, pad_px=6)
    if sl is None:
        return None, np.zeros((0, 0), np.float32), np.zeros((0, 0), np.uint8)
    U, V = fr.coords(sl)
    U, V = U - np.float32(nx), V - np.float32(ny)
    u, n = (tuple(float(x) for x in vec) for vec in anat.axis)
    s, d = U * u[0] + V * u[1], U * n[0] + V * n[1]
    frac = anat.fracture
    sd, dd = s, d
    if frac is not None and (frac.step or frac.angle):
        sd, dd = _displace(anat, frac, s, d)
    # nasal bone in (possibly displaced) bone coordinates
    t = sd * (1 / L)
    off = dd - (anat.bulge * 4) * t * (1 - t)
    h = anat.h0 + (anat.h1 - anat.h0) * np.clip(t, 0, 1)
    taper = 1 - 0.35 * np.clip(t, 0, 1) + 0.1 * np.sin(sd * 0.5 + anat.bones["phase"])
    nasal = anat.rho * _ramp(h - np.abs(off), 0.45) * _ramp(sd + 0.3 * L, 3.0) * _ramp(L - sd, 1.0) * taper
    for g in anat.grooves:
        gd = off - h * g.d0 - (sd - g.s0) * g.slope
        lucent = np.clip(1 - np.abs(gd) * (2 / g.width), 0, 1) * _ramp(sd - g.s0, 2) * _ramp(g.s1 - sd, 2)
        nasal *= 1 - g.depth * lucent
    if anat.nf_suture is not None:
        nasal *= 1 - _line_profile(anat, anat.nf_suture, s, d)
    if frac is not None:
        for line in frac.lines:
            nasal *= 1 - _line_profile(anat, line, s, d)
    # frontal process of the maxilla, posterior to the bone, and the nasomaxillary suture between them
    t0 = s * (1 / L)
    off0 = d - (anat.bulge * 4) * t0 * (1 - t0)
    h0 = anat.h0 + (anat.h1 - anat.h0) * np.clip(t0, 0, 1)
    fp_w = anat.bones["fp_w"]
    fp = (
        (anat.rho * anat.bones["fp_rho"])
        * _ramp(off0 + h0 + fp_w, 1.5)
        * _ramp(-h0 - off0 + 0.2, 0.4)
        * _ramp(s - 0.05 * L, 4)
        * _ramp(1.25 * L - s, 6)
    )
    total = nasal + fp
    if anat.nm_suture is not None:
        s0, s1, w, depth = anat.nm_suture
        line = np.clip(1 - np.abs(off0 + h0) * (2 / w), 0, 1) * _ramp(s - s0, 2) * _ramp(s1 - s, 3)
        total *= 1 - depth * line
    mask = np.zeros(s.shape, np.uint8)
    if frac is not None:
        mask = _fracture_mask(anat, frac, fr, s, d, off0, h0)
    return sl, total.astype(np.float32), mask


def _line_frame(anat: Anatomy, line: Line, s: Array, d: Array) -> tuple[Array, Array]:
    """Coordinates across (``along`` = signed distance to the line) and along a line crossing the bone."""
    u, n = anat.axis
    c = anat.centre_point(line.s) - np.asarray(anat.nasion)
    cs, cd = float(c @ u), float(c @ n)
    ca, sa = math.cos(line.angle), math.sin(line.angle)
    ds, dd = s - cs, d - cd
    return ds * ca + dd * sa, dd * ca - ds * sa


def _line_profile(anat: Anatomy, line: Line, s: Array, d: Array) -> Array:
    """Lucency (0..depth) of a line crossing the bone; coordinates relative to the nasion."""
    dist, across = _line_frame(anat, line, s, d)
    if line.jag_amp:
        dist = dist + line.jag_amp * np.sin(across * (2 * math.pi / line.jag_period) + line.s)
    return line.depth * np.clip(1.35 - np.abs(dist) * (2 / line.width), 0, 1)


def _displace(anat: Anatomy, frac: Fracture, s: Array, d: Array) -> tuple[Array, Array]:
    """Inverse-map coordinates distal to the last fracture line (step-off, then rotation about it)."""
    line = frac.lines[-1]
    u, n = anat.axis
    c = anat.centre_point(line.s) - np.asarray(anat.nasion)
    cs, cd = float(c @ u), float(c @ n)
    distal = _line_frame(anat, line, s, d)[0] > 0
    ps, pd = s - cs, d - (cd + frac.step)
    cr, sr = math.cos(frac.angle), math.sin(frac.angle)
    rs, rd = cr * ps - sr * pd, sr * ps + cr * pd
    return np.where(distal, rs + cs, s), np.where(distal, rd + cd, d)


def displaced_tip(anat: Anatomy) -> Array:
    """Tip (mm) after the fracture displacement (the forward map of ``_displace``)."""
    frac = anat.fracture
    tip = anat.tip
    if frac is None or not (frac.step or frac.angle):
        return tip
    u, n = anat.axis
    c = anat.centre_point(frac.lines[-1].s)
    rel = tip - c
    ts, td = float(rel @ u), float(rel @ n)
    cr, sr = math.cos(frac.angle), math.sin(frac.angle)
    fs, fd = cr * ts + sr * td, -sr * ts + cr * td
    return c + fs * u + (fd + frac.step) * n


def _fracture_mask(anat: Anatomy, frac: Fracture, fr: Frame, s: Array, d: Array, off0: Array, h0: Array) -> Array:
    """Fracture line(s) dilated by ~3 px, restricted to the bone and its immediate surroundings."""
    px = 1.0 / fr.k
    near = (np.abs(off0) <= h0 + 2 * px + abs(frac.step) + 0.5) & (s > -2 * px) & (s < anat.length + 3 * px)
    m = np.zeros(s.shape, bool)
    for line in frac.lines:
        dist, _ = _line_frame(anat, line, s, d)
        m |= np.abs(dist) <= line.width / 2 + line.jag_amp + 3 * px
    return (m & near).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

LUT_N, LUT_MAX = 8192, 16.0


def _resize(a: Array, size: int) -> Array:
    """Bilinear resize of a float32 array to (size, size), pixel-centre aligned."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(a, np.float32)).resize((size, size), Image.BILINEAR)
    return np.array(img)


def _coarse_attenuation(anat: Anatomy, fr: Frame, view: View, rng: np.random.Generator) -> Array:
    """Attenuation of everything but the nasal bone region, on a coarse grid, blurred."""
    soft = _soft_tissue(anat, fr)
    bone = np.zeros_like(soft)
    _vault(anat, fr, bone)
    _frontal(anat, fr, bone)
    _face_bones(anat, fr, bone)
    _mandible(anat, fr, bone)
    _spine(anat, fr, bone)
    small = ndimage.gaussian_filter(rng.standard_normal((24, 24)).astype(np.float32), 1.2, mode="wrap")
    tex = _resize(small * (view.texture / (small.std() + 1e-6)), fr.n)
    att = MU_SOFT * np.clip(soft, 0, None) + MU_BONE * np.clip(bone, 0, None) * (1 + tex)
    att = ndimage.gaussian_filter(att, max(view.blur / fr.step, 0.4), truncate=3.0)
    if view.compress:  # dynamic range compression of the processed radiograph
        low = _resize(ndimage.gaussian_filter(att[::4, ::4], 6.0 / fr.step, mode="nearest"), fr.n)
        att -= view.compress * np.clip(low - 1.2, 0, None)
    return att


def _detector(att: Array, view: View, rng: np.random.Generator, top: float) -> Array:
    """Quantum noise (in the log domain: std = 1/sqrt(photons * exp(-A))) and the display mapping."""
    grid = np.linspace(0, LUT_MAX, LUT_N)  # attenuation at the detector (after the energy factor)
    norm = 1 - math.exp(-view.exposure * view.window * top)
    shown = np.clip((1 - np.exp(-view.exposure * grid)) / norm, 0, 1) ** view.gamma
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


def _place(view: View, anat: Anatomy, tip_mm: Array, size: int, margin: float = 0.1) -> None:
    """Shift the view so that the nasal bone lies inside the image with a margin."""
    c, s = math.cos(view.theta), math.sin(view.theta)
    pts = (np.array([anat.nasion, tip_mm]) - REF_MM) @ np.array([[c, -s], [s, c]]).T * view.scale + view.centre
    lo, hi = margin * size, (1 - margin) * size
    dx = max(lo - pts[:, 0].min(), 0.0) - max(pts[:, 0].max() - hi, 0.0)
    dy = max(lo - pts[:, 1].min(), 0.0) - max(pts[:, 1].max() - hi, 0.0)
    view.centre = (view.centre[0] + dx, view.centre[1] + dy)


def _collimate(img: Array, view: View, keep: tuple[float, float, float, float]) -> None:
    """Dark or bright bands on 0-2 edges, never covering ``keep`` (x0, y0, x1, y1)."""
    size = img.shape[0]
    pos = np.arange(size, dtype=np.float32)
    for edge, frac, value in view.collimation:
        w = frac * size
        if edge == "left":
            w = min(w, keep[0] - 4)
            band = _ramp(w - pos, 3.0)[None, :]
        elif edge == "right":
            w = min(w, size - keep[2] - 4)
            band = _ramp(pos - (size - w), 3.0)[None, :]
        elif edge == "top":
            w = min(w, keep[1] - 4)
            band = _ramp(w - pos, 3.0)[:, None]
        else:
            w = min(w, size - keep[3] - 4)
            band = _ramp(pos - (size - w), 3.0)[:, None]
        if w > 1:
            img *= 1 - band
            img += band * np.float32(value)


FONT = {
    "L": ["10000"] * 6 + ["11111"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
    "A": ["01110", "10001", "10001", "11111", "10001", "10001", "10001"],
    "T": ["11111"] + ["00100"] * 6,
    "F": ["11111", "10000", "10000", "11110", "10000", "10000", "10000"],
    "N": ["10001", "11001", "10101", "10011", "10001", "10001", "10001"],
    "0": ["01110", "10001", "10011", "10101", "11001", "10001", "01110"],
    "1": ["00100", "01100", "00100", "00100", "00100", "00100", "01110"],
    "2": ["01110", "10001", "00001", "00010", "00100", "01000", "11111"],
    "3": ["11110", "00001", "00001", "01110", "00001", "00001", "11110"],
    "4": ["00010", "00110", "01010", "10010", "11111", "00010", "00010"],
    "5": ["11111", "10000", "11110", "00001", "00001", "10001", "01110"],
    "6": ["00110", "01000", "10000", "11110", "10001", "10001", "01110"],
    "7": ["11111", "00001", "00010", "00100", "01000", "01000", "01000"],
    "8": ["01110", "10001", "10001", "01110", "10001", "10001", "01110"],
    "9": ["01110", "10001", "10001", "01111", "00001", "00010", "01100"],
    "-": ["00000"] * 3 + ["11111"] + ["00000"] * 3,
    " ": ["00000"] * 7,
}
_GLYPHS = {k: np.array([[c == "1" for c in row] for row in v]) for k, v in FONT.items()}


def text_bitmap(text: str, scale: int) -> Array:
    """Boolean bitmap of ``text`` in the built-in 5x7 block font, ``scale`` pixels per dot."""
    glyphs = [np.pad(_GLYPHS.get(ch, _GLYPHS[" "]), ((0, 0), (0, 1))) for ch in text]
    bm = np.concatenate(glyphs, axis=1)[:, :-1]
    return np.kron(bm, np.ones((scale, scale), bool))


def _markers(img: Array, view: View, rng: np.random.Generator, keep: tuple[float, float, float, float]) -> None:
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


def _render_view(anat: Anatomy, view: View, size: int, rng: np.random.Generator) -> PhantomView:
    """Render one view: coarse anatomy, fine nasal region, detector, borders and markers."""
    tip_mm = displaced_tip(anat)
    _place(view, anat, tip_mm, size)
    coarse = Frame(view, size, (size + 1) // 2)
    att = _coarse_attenuation(anat, coarse, view, rng)
    top = float(att.max()) * view.energy
    att = _resize(att, size)
    fine = Frame(view, size)
    sl, nasal, mask_box = _nasal_bone(anat, fine)
    mask = np.zeros((size, size), np.uint8)
    if sl is not None:
        att[sl] += MU_BONE * ndimage.gaussian_filter(nasal, view.blur, truncate=3.0)
        mask[sl] = mask_box
    img = _detector(att, view, rng, top)
    nas_px, tip_px = fine.to_px(np.array([anat.nasion, tip_mm]))
    keep = (
        min(nas_px[0], tip_px[0]) - 20,
        min(nas_px[1], tip_px[1]) - 20,
        max(nas_px[0], tip_px[0]) + 20,
        max(nas_px[1], tip_px[1]) + 20,
    )
    _collimate(img, view, keep)
    _markers(img, view, rng, keep)
    frac = anat.fracture
    return PhantomView(
        image=np.clip(img, 0, 1).astype(np.float32),
        nasion=(float(nas_px[0]), float(nas_px[1])),
        tip=(float(tip_px[0]), float(tip_px[1])),
        mask=mask,
        label=int(frac is not None),
        meta={
            "fracture_kind": frac.kind if frac else "",
            "px_per_mm": fine.k,
            "bone_length_px": float(np.hypot(*(tip_px - nas_px))),
        },
    )


def sample_patient(patient_seed: int, fracture: bool) -> Anatomy:
    """The patient's anatomy, confounders and (if ``fracture``) fracture, from independent streams."""
    anat = _sample_anatomy(np.random.default_rng([patient_seed, 0]))
    _sample_confounders(np.random.default_rng([patient_seed, 1]), anat)
    if fracture:
        anat.fracture = _sample_fracture(np.random.default_rng([patient_seed, 2]), anat)
    return anat


def render_patient(patient_seed: int, fracture: bool, n_views: int = 2, size: int = 512) -> list[PhantomView]:
    """Render ``n_views`` acquisitions of one patient (same anatomy, label and fracture)."""
    anat = sample_patient(patient_seed, fracture)
    prng = np.random.default_rng([patient_seed, 3])
    base = {
        "scale": _u(prng, 0.85, 1.15),
        "theta": math.radians(_u(prng, -7.5, 7.5)),
        "dx": _u(prng, -0.07, 0.07),
        "dy": _u(prng, -0.07, 0.07),
    }
    views = []
    for v in range(n_views):
        vrng = np.random.default_rng([patient_seed, 4, v])
        views.append(_render_view(anat, _sample_view(vrng, base, size), size, vrng))
    return views


# ----------------------------------------------------------------------------------------------
# Dataset writing and preview
# ----------------------------------------------------------------------------------------------


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
    formats: Mapping[str, float] = DEFAULT_FORMATS,
    stats: dict | None = None,
) -> Path:
    """Write ``n_images`` views (2 per patient; the last patient has 1 if ``n_images`` is odd).

    Creates ``images/``, ``masks/`` (fracture views only), ``dataset.csv`` (columns ``CSV_COLUMNS``,
    paths relative to ``out_dir``) and ``preview.png``; returns the csv path. If ``stats`` is given it
    receives counts and timings.
    """
    from PIL import Image

    from scripts.imageio import save_xray

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows, preview = [], []
    t_render = t_write = 0.0
    for i in range((n_images + 1) // 2):
        pid = f"P{i:04d}"
        pseed, fracture, kinds = _patient_plan(seed, i, fracture_rate, formats)
        t0 = time.perf_counter()
        views = render_patient(pseed, fracture, n_views=min(2, n_images - 2 * i), size=size)
        t1 = time.perf_counter()
        for v, view in enumerate(views):
            name = f"{pid}_{v}"
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=int, default=1000, help="number of images (2 per patient)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fracture_rate", type=float, default=0.4)
    p.add_argument("--size", type=int, default=512)
    args = p.parse_args(argv)
    stats: dict = {}
    t0 = time.perf_counter()
    csv_path = write_dataset(args.out, args.n, args.fracture_rate, args.seed, args.size, stats=stats)
    total = time.perf_counter() - t0
    n = max(stats["images"], 1)
    print(csv_path)
    print(f"images={stats['images']} patients={stats['patients']} fractures={stats['fractures']}")
    print(
        f"render {n / max(stats['render_s'], 1e-9):.1f} images/s; with file writing "
        f"{n / max(stats['render_s'] + stats['write_s'], 1e-9):.1f} images/s; total {total:.1f} s"
    )


if __name__ == "__main__":
    main()
