"""Device profiles ("sites"): how one X-ray room's images differ from another's, for the same patients.

Site ``a`` is the phantom as it has always been (its output does not depend on this module). Site ``b`` is a
second hospital's facial-bone room, drawn from separate random streams (``[patient_seed, 5]`` for the pose,
``[patient_seed, 6, view]`` for the device), so anatomy, confounders and fracture stay those of site ``a``:

- tone curve and gamma: a film-like S-curve (contrast 3.5-5.5 around 0.45-0.55) after a gamma of 1.0-1.3;
- edge enhancement: unsharp masking (amount 0.6-1.2, Gaussian sigma 2.5-5 px at 512 px);
- exposure: a longer display exposure (0.3-0.5 instead of 0.22-0.45) at 400-2000 photons (300-3000), so that the
  skull is brighter and the noise, sharpened, grainier;
- head scale and position: a tighter field (head 1.15-1.35 times larger) centred on the face (shifted back
  by 20-28% of the image);
- collimation: unexposed (bright) bands on 2-4 edges, always;
- burned-in text: a three-line block (device, date, kVp and mAs) and a boxed side letter, white outlined in black;
- storage: MONOCHROME1 DICOM (inverted when stored; the loader inverts it back), and 10% of the images as JPEGs
  exported from those stored values by a tool that ignored the photometric interpretation (``jpeg_inverted``:
  bone dark, nothing in the file says so).

Landmarks and masks follow the scale and position exactly: every structure is evaluated through the view's
transform (``geometry.Frame``), the same one that maps the landmarks.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .font import text_bitmap
from .params import Array, View
from .sampling import uniform

SITES = ("a", "b")
SITE_B_FORMATS: dict[str, float] = {"dcm_mono1": 0.9, "jpeg_inverted": 0.1}
INVERTED_KINDS = {"jpeg_inverted": "jpeg"}  # phantom kind -> scripts.imageio kind written with 1 - image


def check_site(site: str) -> str:
    """``site`` if it is one of ``SITES``, else ``ValueError``."""
    if site not in SITES:
        raise ValueError(f"unknown site '{site}' (expected one of {', '.join(SITES)})")
    return site


def site_b_pose(base: dict[str, float], patient_seed: int) -> dict[str, float]:
    """Site B's patient pose: the head larger (tighter field) and shifted back so that the face is central."""
    rng = np.random.default_rng([patient_seed, 5])
    return {
        **base,
        "scale": base["scale"] * uniform(rng, 1.15, 1.35),
        "dx": base["dx"] * 0.5 - uniform(rng, 0.2, 0.28),
        "dy": base["dy"] * 0.5 + uniform(rng, -0.04, 0.04),
    }


def site_b_view(view: View, rng: np.random.Generator) -> None:
    """Replace ``view``'s device settings (display, dose, processing, collimation) by site B's, in place."""
    view.exposure = uniform(rng, 0.3, 0.5)
    view.window = uniform(rng, 0.8, 1.0)
    view.gamma = uniform(rng, 1.0, 1.3)
    view.photons = float(np.exp(rng.uniform(np.log(400), np.log(2000))))
    view.tone = (uniform(rng, 3.5, 5.5), uniform(rng, 0.45, 0.55))
    view.unsharp = (uniform(rng, 0.6, 1.2), uniform(rng, 2.5, 5.0))
    edges = rng.choice(["top", "bottom", "left", "right"], size=int(rng.integers(2, 5)), replace=False)
    view.collimation = [(str(e), uniform(rng, 0.03, 0.12), uniform(rng, 0.92, 1.0)) for e in edges]
    view.site = "b"


def tone_curve(shown: Array, contrast: float, mid: float) -> Array:
    """Film-like S-curve on [0, 1] (a logistic of ``contrast`` around ``mid``, rescaled to map 0 -> 0 and 1 -> 1)."""
    lo, hi = (1 / (1 + math.exp(-contrast * (x - mid))) for x in (0.0, 1.0))
    return (1 / (1 + np.exp(-contrast * (shown - mid))) - lo) / (hi - lo)


def unsharp_mask(img: Array, amount: float, sigma_px: float) -> Array:
    """Edge enhancement: ``img + amount * (img - blur(img))`` with a Gaussian of ``sigma_px`` pixels."""
    return img + np.float32(amount) * (img - ndimage.gaussian_filter(img, sigma_px, mode="nearest"))


def _text_block(lines: list[str], unit: int) -> Array:
    """Left-aligned lines of burned-in text, one dot row between lines."""
    bms = [text_bitmap(line, unit) for line in lines]
    width = max(b.shape[1] for b in bms)
    rows = [np.pad(b, ((0, 2 * unit), (0, width - b.shape[1]))) for b in bms]
    return np.concatenate(rows)[: -2 * unit]


def _boxed(bm: Array, unit: int) -> Array:
    """``bm`` inside a one-dot frame with a gap of one dot."""
    pad = np.pad(bm, 2 * unit)
    pad[:unit], pad[-unit:], pad[:, :unit], pad[:, -unit:] = True, True, True, True
    return pad


def burn_site_b_text(img: Array, rng: np.random.Generator, keep: tuple[float, float, float, float]) -> None:
    """Site B's burned-in text: a device/date/exposure block at the top and a boxed side letter at the bottom."""
    size = img.shape[0]
    unit = max(size // 256, 1)
    date = f"20{int(rng.integers(18, 25))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"
    block = _text_block([f"DX-B {int(rng.integers(1, 9))}", date, f"KVP {int(rng.integers(60, 76))} MAS 8"], unit)
    side = _boxed(text_bitmap(str(rng.choice(["L", "R"])), 2 * unit), unit)
    margin = int(size * 0.025)
    for bm, corners in ((block, (0, 1)), (side, (3, 2))):
        h, w = bm.shape
        for corner in corners:
            y0 = margin if corner < 2 else size - margin - h
            x0 = margin if corner % 2 == 0 else size - margin - w
            if x0 + w < keep[0] - 10 or x0 > keep[2] + 10 or y0 + h < keep[1] - 10 or y0 > keep[3] + 10:
                region = img[y0 : y0 + h, x0 : x0 + w]
                region[ndimage.binary_dilation(bm, iterations=max(unit // 2, 1))] = np.float32(0.0)  # dark outline
                region[bm] = np.float32(1.0)
                break
