"""Development tooling around the bundle (phantom data, demo, benchmark, report); the bundle never imports it.

Run from the repository root with the bundle folder importable, as the Makefile does:
``PYTHONPATH=bundle python -m tools.<name>``.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLE_ROOT = REPO_ROOT / "bundle"
