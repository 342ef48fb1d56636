"""Head structures outside the nasal bone: soft tissue, vault, frontal sinus, face bones, teeth, mandible, spine.

Each adds soft-tissue or bone path length (mm) on the cells of a ``Frame`` (a sub-box where it is local).
"""

from __future__ import annotations

import math

import numpy as np

from .geometry import Frame, chord, local, polyline, ramp
from .params import PROFILE_DY, PROFILE_N, PROFILE_Y0, Anatomy, Array


def soft_tissue(anat: Anatomy, fr: Frame) -> Array:
    """Head, face, nose and neck soft tissue (mm of path), minus the airway."""
    U, V = fr.coords()
    a, b, c, _ = anat.vault
    sc = anat.soft
    head = (c * 1.05) * chord(U, V - 2, a + sc["scalp"], b + sc["scalp"])
    idx = np.clip(((V - PROFILE_Y0) * (1 / PROFILE_DY)).astype(np.int32), 0, PROFILE_N - 1)
    face_x, nose_x = anat.profile_tables[0][idx], anat.profile_tables[1][idx]
    face = sc["face_w"] * np.sqrt(np.clip((face_x - U) * (1 / 40.0), 0, 1))
    nose = sc["nose_w"] * np.sqrt(np.clip((nose_x - U) * (1 / sc["nose_r"]), 0, 1))
    nx, ny = anat.nasion
    lower = np.maximum(face, nose) * ramp(V - (ny - 8), 40) * ramp(anat.menton_y - V, 5)
    neck_front = (nx - 40) - 0.15 * (V - anat.menton_y)
    neck = 110 * np.sqrt(np.clip((neck_front - U) * (1 / 35.0), 0, 1)) * ramp(V - anat.menton_y + 30, 20)
    soft = np.maximum(head, np.maximum(lower, neck) * ramp(U + 85, 25))
    air = np.array([[nx - 72, ny + 35], [nx - 92, ny + 70], [nx - 100, ny + 115], [nx - 102, ny + 220]])
    sl = fr.box(nx - 115, nx - 55, ny + 25, ny + 230)
    if sl is not None:
        d, _ = polyline(*fr.coords(sl), air)
        soft[sl] -= sc["airway"] * np.clip(1.0 - d * (1 / 7.0), 0, 1)
    return soft


def _vault(anat: Anatomy, fr: Frame, bone: Array) -> None:
    """Skull vault as an ellipsoidal shell, fading out below the skull base line."""
    a, b, c, t = anat.vault
    U, V = fr.coords()
    shell = c * chord(U, V, a, b) - (c - t) * chord(U, V, a - t, b - t)
    nx, ny = anat.nasion
    cut = (ny + 12) + (nx - U) * 0.15  # skull base line, lower at the back
    base = np.clip(1 - np.abs(V - cut + 8) * (1 / 14), 0, 1) * ramp(U + a - 25, 30) * ramp((nx - 25) - U, 20)
    bone += shell * ramp(cut - V, 36) + 10 * base


def _frontal(anat: Anatomy, fr: Frame, bone: Array) -> None:
    """Glabella and the frontal sinus (lucent with a thin sclerotic rim)."""
    nx, ny = anat.nasion
    bn = anat.bones
    sl = fr.around(nx - 10, ny - 15, 25, 30)
    if sl is None:
        return
    U, V = fr.coords(sl)
    gu, gv = local(U, V, nx - 2, ny - 12, -0.3)
    b = (2.5 * bn["glabella"]) * chord(gu, gv, 6, 11)
    su, sv = local(U, V, nx - 9, ny - 19, 0.25)
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
        return 6 * line * ramp(U - (nx - 70), 8) * ramp((nx - 12) - U, 6)

    def petrous(U: Array, V: Array) -> Array:
        return 9 * chord(*local(U, V, nx - 105, ny + 8, 0.35), 26, 9) + 6 * chord(
            *local(U, V, nx - 112, ny + 22, 0.1), 12, 10
        )

    def sella(U: Array, V: Array) -> Array:
        su, sv = U - (nx - 75), V - (ny - 10)
        return 10 * np.clip(1 - np.abs(np.sqrt(su * su + sv * sv) - 6) * (1 / 1.3), 0, 1) * ramp(sv, 3)

    def maxilla(U: Array, V: Array) -> Array:
        return (
            6 * chord(*local(U, V, nx - 32, ny + 40, -0.15), 34, 21)
            - 4 * chord(*local(U, V, nx - 34, ny + 36, -0.1), 21, 13)
            + 7 * chord(*local(U, V, nx - 40, ny + 31, -0.35), 20, 6)
        )  # zygoma

    py = ny + bn["palate_y"]

    def palate(U: Array, V: Array) -> Array:
        return 11 * np.clip(1 - np.abs(V - py) * (1 / 2.2), 0, 1) * ramp(U - (nx - 62), 4) * ramp((nx + 6) - U, 4)

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
    crown = ramp(ad - 0.8, 1.2) * ramp(8.0 - ad, 1.5)
    root = ramp(ad - 7.5, 1) * ramp(20 - ad, 6)
    band = ramp(U - (nx - 58), 4) * ramp((nx - 1) - U, 3)
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
    d, arc = polyline(*fr.coords(sl), pts)
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
    body = ramp(w - 1, 1.5) * ramp(15 - w, 1.5) * ramp(lv + 8, 1.5) * ramp(8 - lv, 1.5) * (lu > 0)
    rim = np.minimum(np.minimum(np.abs(w - 1), np.abs(15 - w)), np.minimum(np.abs(lv + 8), np.abs(8 - lv)))
    vert = body * (8 + 12 * np.clip(1 - rim * (1 / 1.5), 0, 1))
    proc = ramp(lv + 42, 2) * ramp(-14 - lv, 2) * np.clip(1 - np.abs(w - 9 + (lv + 14) * 0.25) * (1 / 3.5), 0, 1)
    bone[sl] += vert + 12 * proc * (lu > 5)


def add_bones(anat: Anatomy, fr: Frame, bone: Array) -> None:
    """Add the bone path length of vault, frontal region, face bones, mandible and spine to ``bone``."""
    _vault(anat, fr, bone)
    _frontal(anat, fr, bone)
    _face_bones(anat, fr, bone)
    _mandible(anat, fr, bone)
    _spine(anat, fr, bone)
