"""The bundle's metadata validates against the MONAI schema kept in the repo (no download)."""

from __future__ import annotations

import json
import os
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


def test_every_config_imports_the_packages_its_expressions_name() -> None:
    """``$import a.b`` binds only ``a.b`` in MONAI's parser, so ``a`` must be imported on its own too."""
    import yaml

    for path in sorted((BUNDLE_ROOT / "configs").rglob("*.yaml")):
        imports = (yaml.safe_load(path.read_text()) or {}).get("imports", [])
        names = {s.removeprefix("$import ").split(" as ")[0] for s in imports if s.startswith("$import ")}
        for name in names:
            parents = [name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)]
            missing = [p for p in parents if p not in names]
            assert not missing, f"{path.name}: '$import {name}' needs '$import {missing[0]}' before it"


def test_top_level_configs_resolve_through_the_cli(tmp_path, models) -> None:
    """``monai.bundle run`` (the documented commands) can evaluate the top-level expressions' imports."""
    configs = BUNDLE_ROOT / "configs"
    for config, run_id, expr, extra in (
        ("train.yaml", "training", "$print('resolved', scripts.pipeline.train_all.__name__)", []),
        # inference checks its weights first: the tiny ones (a fresh clone has none in bundle/models)
        (
            "inference.yaml",
            "inference",
            "$print('resolved', scripts.inference.run_inference.__name__)",
            ["--models_dir", str(models)],
        ),
    ):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "monai.bundle",
                "run",
                run_id,
                "--config_file",
                str(configs / config),
                f"--{run_id}",
                expr,
                "--output_dir",
                str(tmp_path),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(BUNDLE_ROOT)},  # the bundle's scripts, as the README's venv sets
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "resolved" in result.stdout
