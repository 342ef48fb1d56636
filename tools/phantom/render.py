"""Rendering of a patient's views: coarse head attenuation, fine nasal region, detector, borders, ground truth."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .detector import burn_markers, collimate, detector
from .geometry import Frame
from .head import add_bones, soft_tissue
from .nasal import displaced_tip, nasal_bone
from .params import MU_BONE, MU_SOFT, REF_MM, Anatomy, Array, PhantomView, View
from .sampling import sample_patient, sample_view, uniform
from .site import burn_site_b_text, check_site, site_b_pose, site_b_view, unsharp_mask


def resize(a: Array, size: int) -> Array:
    """Bilinear resize of a float32 array to (size, size), pixel-centre aligned."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(a, np.float32)).resize((size, size), Image.BILINEAR)
    return np.array(img)


def _coarse_attenuation(anat: Anatomy, fr: Frame, view: View, rng: np.random.Generator) -> Array:
    """Attenuation of everything but the nasal bone region, on a coarse grid, blurred."""
    soft = soft_tissue(anat, fr)
    bone = np.zeros_like(soft)
    add_bones(anat, fr, bone)
    small = ndimage.gaussian_filter(rng.standard_normal((24, 24)).astype(np.float32), 1.2, mode="wrap")
    tex = resize(small * (view.texture / (small.std() + 1e-6)), fr.n)
    att = MU_SOFT * np.clip(soft, 0, None) + MU_BONE * np.clip(bone, 0, None) * (1 + tex)
    att = ndimage.gaussian_filter(att, max(view.blur / fr.step, 0.4), truncate=3.0)
    if view.compress:  # dynamic range compression of the processed radiograph
        low = resize(ndimage.gaussian_filter(att[::4, ::4], 6.0 / fr.step, mode="nearest"), fr.n)
        att -= view.compress * np.clip(low - 1.2, 0, None)
    return att


def _place(view: View, anat: Anatomy, tip_mm: Array, size: int, margin: float = 0.1) -> None:
    """Shift the view so that the nasal bone lies inside the image with a margin."""
    c, s = math.cos(view.theta), math.sin(view.theta)
    pts = (np.array([anat.nasion, tip_mm]) - REF_MM) @ np.array([[c, -s], [s, c]]).T * view.scale + view.centre
    lo, hi = margin * size, (1 - margin) * size
    dx = max(lo - pts[:, 0].min(), 0.0) - max(pts[:, 0].max() - hi, 0.0)
    dy = max(lo - pts[:, 1].min(), 0.0) - max(pts[:, 1].max() - hi, 0.0)
    view.centre = (view.centre[0] + dx, view.centre[1] + dy)


def _render_view(
    anat: Anatomy, view: View, size: int, rng: np.random.Generator, text_rng: np.random.Generator | None = None
) -> PhantomView:
    """Render one view: coarse anatomy, fine nasal region, detector, processing, borders and markers
    (site B's text from ``text_rng``)."""
    tip_mm = displaced_tip(anat)
    _place(view, anat, tip_mm, size)
    coarse = Frame(view, size, (size + 1) // 2)
    att = _coarse_attenuation(anat, coarse, view, rng)
    top = float(att.max()) * view.energy
    att = resize(att, size)
    fine = Frame(view, size)
    sl, nasal, mask_box = nasal_bone(anat, fine)
    mask = np.zeros((size, size), np.uint8)
    if sl is not None:
        att[sl] += MU_BONE * ndimage.gaussian_filter(nasal, view.blur, truncate=3.0)
        mask[sl] = mask_box
    img = detector(att, view, rng, top)
    if view.unsharp[0]:
        img = unsharp_mask(img, view.unsharp[0], view.unsharp[1] * size / 512)
    nas_px, tip_px = fine.to_px(np.array([anat.nasion, tip_mm]))
    keep = (
        min(nas_px[0], tip_px[0]) - 20,
        min(nas_px[1], tip_px[1]) - 20,
        max(nas_px[0], tip_px[0]) + 20,
        max(nas_px[1], tip_px[1]) + 20,
    )
    collimate(img, view, keep)
    if view.site == "b":
        burn_site_b_text(img, text_rng or rng, keep)
    else:
        burn_markers(img, view, rng, keep)
    frac = anat.fracture
    return PhantomView(
        image=np.clip(img, 0, 1).astype(np.float32),
        nasion=(float(nas_px[0]), float(nas_px[1])),
        tip=(float(tip_px[0]), float(tip_px[1])),
        mask=mask,
        label=int(frac is not None),
        meta={
            "fracture_kind": frac.kind if frac else "",
            "site": view.site,
            "px_per_mm": fine.k,
            "bone_length_px": float(np.hypot(*(tip_px - nas_px))),
        },
    )


def render_patient(
    patient_seed: int, fracture: bool, n_views: int = 2, size: int = 512, site: str = "a"
) -> list[PhantomView]:
    """Render ``n_views`` acquisitions of one patient (same anatomy, label and fracture) on device ``site``."""
    check_site(site)
    anat = sample_patient(patient_seed, fracture)
    prng = np.random.default_rng([patient_seed, 3])
    base = {
        "scale": uniform(prng, 0.85, 1.15),
        "theta": math.radians(uniform(prng, -7.5, 7.5)),
        "dx": uniform(prng, -0.07, 0.07),
        "dy": uniform(prng, -0.07, 0.07),
    }
    if site == "b":
        base = site_b_pose(base, patient_seed)
    views = []
    for v in range(n_views):
        vrng = np.random.default_rng([patient_seed, 4, v])
        view = sample_view(vrng, base, size)
        if site == "b":  # its own stream: the noise and texture draws of vrng stay those of site a
            srng = np.random.default_rng([patient_seed, 6, v])
            site_b_view(view, srng)
            views.append(_render_view(anat, view, size, vrng, srng))
        else:
            views.append(_render_view(anat, view, size, vrng))
    return views
