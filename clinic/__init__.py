"""The bundle in a clinic: a warm inference engine, a local web service with a viewer page, and a DICOM node.

Like ``tools/``, this runs from the repository root with the bundle folder importable (``PYTHONPATH=bundle``, as
the Makefile and ``.venv/bin/activate`` set it); the bundle itself never imports it.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLE_ROOT = REPO_ROOT / "bundle"
