"""Constants of the phantom and the parameter records of a patient (anatomy, confounders, fracture) and a view."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import PchipInterpolator

FOV_MM = 250.0  # field of view at scale 1 (about 2 px/mm at 512 px)
MU_SOFT = 0.02  # attenuation per mm of soft tissue
MU_BONE = 0.05  # extra attenuation per mm of bone path
REF_MM = (8.0, 40.0)  # patient point placed near the image centre (middle of the head's extent)
PROFILE_Y0, PROFILE_DY, PROFILE_N = -140.0, 0.25, 1800  # lookup table of the face profile x(y)
FRACTURE_KINDS = ("line", "step", "angulated", "double")
Array = np.ndarray


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
    tone: tuple[float, float] | None = None  # S-shaped tone curve (contrast, midpoint) after the gamma; None: none
    unsharp: tuple[float, float] = (0.0, 0.0)  # edge enhancement: amount, Gaussian sigma in px at 512 px
    site: str = "a"  # device profile (tools.phantom.site): its burned-in text


@dataclass
class PhantomView:
    """A rendered view with its ground truth (pixel coordinates: x = column, y = row)."""

    image: Array
    nasion: tuple[float, float]
    tip: tuple[float, float]
    mask: Array
    label: int
    meta: dict = field(default_factory=dict)
