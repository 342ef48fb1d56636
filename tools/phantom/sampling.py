"""Random patients (anatomy, face profile, confounders, fracture) and acquisition settings."""

from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import PchipInterpolator

from .params import FOV_MM, FRACTURE_KINDS, PROFILE_DY, PROFILE_N, PROFILE_Y0, Anatomy, Fracture, Groove, Line, View


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One draw from U(lo, hi) as a Python float."""
    return float(rng.uniform(lo, hi))


def _sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Random patient geometry with the face profile built around the nasal bone."""
    a, b = uniform(rng, 88, 98), uniform(rng, 74, 84)
    vault = (a, b, uniform(rng, 66, 74), uniform(rng, 5.5, 8.0))
    beta = math.radians(uniform(rng, 27, 33))
    nasion = (a * math.cos(beta) + uniform(rng, -1, 2), b * math.sin(beta) + uniform(rng, -2, 2))
    phi = math.radians(uniform(rng, 28, 42))
    length = uniform(rng, 19, 27)
    anat = Anatomy(
        vault=vault,
        nasion=nasion,
        phi=phi,
        length=length,
        h0=uniform(rng, 1.1, 1.6),
        h1=uniform(rng, 0.45, 0.7),
        bulge=uniform(rng, -0.6, 1.4),
        rho=uniform(rng, 22, 34),
    )
    _sample_profile(rng, anat)
    anat.bones = {
        "sinus_w": uniform(rng, 4, 8),
        "sinus_h": uniform(rng, 8, 14),
        "orbit_r": uniform(rng, 15, 19),
        "palate_y": uniform(rng, 52, 58),
        "teeth": uniform(rng, 0.8, 1.2),
        "mand_dx": uniform(rng, -5, 5),
        "mand_dy": uniform(rng, -5, 5),
        "teeth_phase": uniform(rng, 0.2, 0.8),
        "spine_tilt": uniform(rng, -0.05, 0.2),
        "spine_x": uniform(rng, -42, -32),
        "fp_w": uniform(rng, 3, 5.5),
        "fp_rho": uniform(rng, 0.12, 0.25),
        "glabella": uniform(rng, 2, 6),
        "phase": uniform(rng, 0, 2 * math.pi),
    }
    return anat


def _sample_profile(rng: np.random.Generator, anat: Anatomy) -> None:
    """Soft-tissue profile x(y) of the face with and without the nose, as monotone splines."""
    nx, ny = anat.nasion
    a, b = anat.vault[0] + 6, anat.vault[1] + 6
    u, n = anat.axis
    tip = anat.tip
    skin = uniform(rng, 2.5, 4.5)
    sn = np.array([nx + uniform(rng, 4, 10), ny + uniform(rng, 46, 54)])  # subnasale
    prn = sn + np.array([uniform(rng, 17, 24), uniform(rng, -10, -6)])  # pronasale
    forehead = [(a * math.cos(t), b * math.sin(t)) for t in np.radians([-60, -40, -20, 0, 12])]
    glabella = (nx + uniform(rng, 6, 10), ny - uniform(rng, 10, 14))
    s_nasion = (nx + uniform(rng, 5, 7), ny + 1.0)
    dorsum = [tuple(anat.centre_point(f * anat.length) + (anat.h0 + skin) * n) for f in (0.45, 1.0)]
    dorsum.append(tuple(tip + 0.5 * (prn - tip) + np.array([skin, -1.0])))
    lips = [
        (sn[0] + uniform(rng, 1, 4), sn[1] + uniform(rng, 10, 14)),  # labrale superius
        (sn[0] + uniform(rng, -3, 0), sn[1] + uniform(rng, 20, 23)),  # stomion
        (sn[0] + uniform(rng, -1, 3), sn[1] + uniform(rng, 30, 34)),  # labrale inferius
        (sn[0] + uniform(rng, -9, -5), sn[1] + uniform(rng, 40, 44)),  # labiomental fold
        (sn[0] + uniform(rng, -4, 3), sn[1] + uniform(rng, 55, 60)),  # pogonion
        (sn[0] + uniform(rng, -14, -8), sn[1] + uniform(rng, 68, 72)),  # menton
    ]
    neck = [(lips[-1][0] - 60, lips[-1][1] + 60), (lips[-1][0] - 62, lips[-1][1] + 160)]
    upper = [*forehead, glabella, s_nasion]
    # without the nose: eyelids and cheeks lie well behind the nasal dorsum
    cheeks = [(nx - uniform(rng, 8, 13), ny + 8), (sn[0] - uniform(rng, 12, 18), sn[1] - 20), (sn[0] - 5, sn[1] + 2)]
    face_pts = [*forehead, glabella, *cheeks, *lips, *neck]
    nose_pts = [*upper, *dorsum, tuple(prn), (prn[0] - 4, prn[1] + 4), (sn[0], sn[1]), *lips, *neck]
    anat.face = _monotone_spline(face_pts)
    anat.nose = _monotone_spline(nose_pts)
    anat.menton_y = lips[-1][1]
    ys = PROFILE_Y0 + PROFILE_DY * np.arange(PROFILE_N)
    anat.profile_tables = (anat.face(ys).astype(np.float32), anat.nose(ys).astype(np.float32))
    anat.soft = {
        "face_w": uniform(rng, 120, 140),
        "nose_w": uniform(rng, 26, 36),
        "nose_r": uniform(rng, 6, 11),
        "scalp": 6.0,
        "airway": uniform(rng, 12, 25),
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
            s=uniform(rng, -0.12, 0.1) * L,
            angle=math.radians(uniform(rng, -30, 30)),
            width=uniform(rng, 0.75, 1.6),
            depth=uniform(rng, 0.55, 1.0),
            jag_amp=uniform(rng, 0.2, 0.6),
            jag_period=uniform(rng, 0.8, 1.6),
        )
    if rng.random() < 0.8:
        anat.nm_suture = (
            uniform(rng, 0.0, 0.3) * L,
            uniform(rng, 0.7, 1.1) * L,
            uniform(rng, 0.5, 1.2),
            uniform(rng, 0.4, 0.9),
        )
    anat.grooves = []
    if rng.random() < 0.75:
        for _ in range(int(rng.integers(1, 4))):
            s0 = uniform(rng, 0.0, 0.5) * L
            anat.grooves.append(
                Groove(
                    s0=s0,
                    s1=s0 + uniform(rng, 0.3, 0.6) * L,
                    d0=uniform(rng, -0.6, 0.6),
                    slope=math.tan(math.radians(uniform(rng, -8, 8))),
                    width=uniform(rng, 0.4, 0.9),
                    depth=uniform(rng, 0.2, 0.6),
                )
            )


def _fracture_line(rng: np.random.Generator, s: float) -> Line:
    return Line(
        s=s,
        angle=math.radians(uniform(rng, -35, 35)),
        width=uniform(rng, 1.5, 3.2) / 2.05,
        depth=uniform(rng, 0.7, 1.0),
        jag_amp=uniform(rng, 0.0, 0.35),
        jag_period=uniform(rng, 0.8, 2.0),
    )


def _sample_fracture(rng: np.random.Generator, anat: Anatomy) -> Fracture:
    """One of the fracture variants, located 20-90% along the bone."""
    L = anat.length
    kind = FRACTURE_KINDS[int(rng.integers(len(FRACTURE_KINDS)))]
    if kind == "double":
        s1, s2 = sorted((uniform(rng, 0.2, 0.55) * L, uniform(rng, 0.6, 0.9) * L))
        lines = [_fracture_line(rng, s1), _fracture_line(rng, s2)]
    else:
        lines = [_fracture_line(rng, uniform(rng, 0.2, 0.9) * L)]
    frac = Fracture(kind=kind, lines=lines)
    if kind == "step":
        frac.step = float(rng.choice([-1.0, 1.0])) * uniform(rng, 0.6, 1.8)
    elif kind == "angulated":
        frac.angle = math.radians(uniform(rng, 5, 16))
        frac.step = -uniform(rng, 0.0, 0.6)
    return frac


def sample_view(rng: np.random.Generator, base: dict[str, float], size: int) -> View:
    """Acquisition settings: the patient's pose plus per-view jitter, exposure, noise, borders, markers."""
    scale = base["scale"] * uniform(rng, 0.97, 1.03) * size / FOV_MM
    theta = base["theta"] + math.radians(uniform(rng, -2.5, 2.5))
    shift = (base["dx"] + uniform(rng, -0.03, 0.03), base["dy"] + uniform(rng, -0.03, 0.03))
    n_edges = int(rng.choice([0, 1, 2], p=[0.4, 0.35, 0.25]))
    edges = rng.choice(["top", "bottom", "left", "right"], size=n_edges, replace=False)
    coll = [
        (str(e), uniform(rng, 0.02, 0.1), uniform(rng, 0.0, 0.08) if rng.random() < 0.5 else uniform(rng, 0.85, 1.0))
        for e in edges
    ]
    return View(
        scale=scale,
        theta=theta,
        centre=(size * (0.5 + shift[0]), size * (0.5 + shift[1])),
        energy=uniform(rng, 0.85, 1.15),
        exposure=uniform(rng, 0.22, 0.45),
        window=uniform(rng, 0.85, 1.1),
        gamma=uniform(rng, 0.75, 1.3),
        compress=uniform(rng, 0.0, 0.5),
        blur=uniform(rng, 0.5, 1.5),
        photons=float(np.exp(rng.uniform(np.log(300), np.log(3000)))),
        texture=uniform(rng, 0.05, 0.2),
        collimation=coll,
        markers=int(rng.integers(0, 3)),
    )


def sample_patient(patient_seed: int, fracture: bool) -> Anatomy:
    """The patient's anatomy, confounders and (if ``fracture``) fracture, from independent streams."""
    anat = _sample_anatomy(np.random.default_rng([patient_seed, 0]))
    _sample_confounders(np.random.default_rng([patient_seed, 1]), anat)
    if fracture:
        anat.fracture = _sample_fracture(np.random.default_rng([patient_seed, 2]), anat)
    return anat
