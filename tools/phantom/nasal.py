"""Nasal bone and frontal process of the maxilla, with sutures, grooves and fractures (lines, displacement, mask)."""

from __future__ import annotations

import math

import numpy as np

from .geometry import Frame, ramp
from .params import Anatomy, Array, Fracture, Line


def nasal_bone(anat: Anatomy, fr: Frame) -> tuple[tuple[slice, slice] | None, Array, Array]:
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
    nasal = anat.rho * ramp(h - np.abs(off), 0.45) * ramp(sd + 0.3 * L, 3.0) * ramp(L - sd, 1.0) * taper
    for g in anat.grooves:
        gd = off - h * g.d0 - (sd - g.s0) * g.slope
        lucent = np.clip(1 - np.abs(gd) * (2 / g.width), 0, 1) * ramp(sd - g.s0, 2) * ramp(g.s1 - sd, 2)
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
        * ramp(off0 + h0 + fp_w, 1.5)
        * ramp(-h0 - off0 + 0.2, 0.4)
        * ramp(s - 0.05 * L, 4)
        * ramp(1.25 * L - s, 6)
    )
    total = nasal + fp
    if anat.nm_suture is not None:
        s0, s1, w, depth = anat.nm_suture
        line = np.clip(1 - np.abs(off0 + h0) * (2 / w), 0, 1) * ramp(s - s0, 2) * ramp(s1 - s, 3)
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
