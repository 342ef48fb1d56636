"""Python side of the nasal bone fracture bundle: what MONAI, Ignite and Ultralytics do not provide."""

from __future__ import annotations

from pathlib import Path

BUNDLE_ROOT = Path(__file__).resolve().parent.parent


def bundle_root() -> str:
    """The bundle folder (``configs/``, ``models/``, ``scripts/``), wherever the command runs from."""
    return str(BUNDLE_ROOT)
