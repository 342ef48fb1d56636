"""The bundle's metadata validates against the MONAI schema kept in the repo (no download)."""

from __future__ import annotations

import json
import subprocess
import sys

from scripts import BUNDLE_ROOT


def test_verify_metadata_offline() -> None:
    schema = BUNDLE_ROOT / "configs" / "schema" / "meta_schema_20240725.json"
    meta = BUNDLE_ROOT / "configs" / "metadata.json"
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(meta), "--filepath", str(schema)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "metadata is verified with no error" in result.stdout + result.stderr
    assert "Downloading" not in result.stdout + result.stderr


def test_metadata_pins_match_pyproject() -> None:
    meta = json.loads((BUNDLE_ROOT / "configs" / "metadata.json").read_text())
    pyproject = (BUNDLE_ROOT.parent / "pyproject.toml").read_text()
    for name, version in meta["required_packages_version"].items():
        assert f'"{name}=={version}"' in pyproject, name
    assert f'"monai=={meta["monai_version"]}"' in pyproject and f'"torch=={meta["pytorch_version"]}"' in pyproject
