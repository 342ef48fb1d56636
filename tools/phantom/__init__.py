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


Run: ``PYTHONPATH=bundle python -m tools.phantom --out data/phantom --n 1000``; ``--site b`` renders the same kind of
patients on a second device (``site``: tone curve, edge enhancement, exposure, field, collimation, text, MONOCHROME1).

Modules: ``params`` (constants and parameter records), ``sampling`` (random patients and views),
``geometry`` (pixel grid <-> patient frame, shape primitives), ``head`` (skull, face, teeth, spine),
``nasal`` (nasal bone, confounders, fractures), ``detector`` (exposure, noise, collimation, markers),
``font`` (burned-in text), ``site`` (device profiles), ``render`` (views of a patient), ``dataset`` (files and csv),
``preview`` (annotated contact sheet, site comparison), ``__main__`` (command line).
"""

from __future__ import annotations

from .dataset import CSV_COLUMNS, DEFAULT_FORMATS, write_dataset
from .font import text_bitmap
from .nasal import displaced_tip
from .params import FRACTURE_KINDS, Anatomy, Fracture, Groove, Line, PhantomView, View
from .preview import preview_tile, save_preview, save_site_comparison
from .render import render_patient
from .sampling import sample_patient
from .site import SITE_B_FORMATS, SITES

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_FORMATS",
    "FRACTURE_KINDS",
    "SITES",
    "SITE_B_FORMATS",
    "Anatomy",
    "Fracture",
    "Groove",
    "Line",
    "PhantomView",
    "View",
    "displaced_tip",
    "preview_tile",
    "render_patient",
    "sample_patient",
    "save_preview",
    "save_site_comparison",
    "text_bitmap",
    "write_dataset",
]
