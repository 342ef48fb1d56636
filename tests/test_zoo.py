"""Model Zoo packaging: the zip unpacks into a bundle that passes the Zoo CI's checks and runs on its own."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts import BUNDLE_ROOT
from tools import zoo

REPO = BUNDLE_ROOT.parent
# the environment of a user who unpacked the zip: the venv's packages, nothing of this repository
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


@pytest.fixture(scope="module")
def packaged(models, tmp_path_factory) -> Path:
    """The repo's bundle with the tiny weights of ``models``, packaged to a zip and unpacked elsewhere."""
    src = tmp_path_factory.mktemp("src") / "bundle"
    for item in zoo.CONTENTS:
        (shutil.copytree if (BUNDLE_ROOT / item).is_dir() else shutil.copy2)(BUNDLE_ROOT / item, src / item)
    (src / "models").mkdir()
    for name in ("detector.pt", "classifier.pt", "gdc2.pt"):
        shutil.copy2(models / name, src / "models" / name)
    archive = zoo.package(src, tmp_path_factory.mktemp("dist"))
    assert archive.name == f"{zoo.BUNDLE_NAME}_v{zoo.version(BUNDLE_ROOT)}.zip"
    return zoo.unpack(archive, tmp_path_factory.mktemp("unpacked"))


def test_package_holds_the_bundle_and_large_files(packaged: Path) -> None:
    for item in ("configs/metadata.json", "configs/inference.yaml", "scripts/__init__.py", "docs/README.md", "LICENSE"):
        assert (packaged / item).is_file(), item
    assert not list(packaged.rglob("__pycache__")) and not (packaged / "tools").exists()
    listed = {e["path"]: e for e in yaml.safe_load((packaged / "large_files.yml").read_text())["large_files"]}
    assert set(listed) == {"models/detector.pt", "models/classifier.pt", "models/gdc2.pt"}
    for path, entry in listed.items():
        assert entry["hash_type"] == "sha256" and entry["hash_val"] == zoo.sha256(packaged / path)


def test_zoo_ci_checks_pass_on_the_unpacked_bundle(packaged: Path) -> None:
    report = zoo.check(packaged)
    assert report["verify_metadata"] == "ok"
    assert report["verify_net_in_out"] == [
        "inference.yaml network_def",
        "gd.yaml network_def (generator_data_format)",
    ]
    assert report["ckpt_export"]["network_def"] <= zoo.ATOL
    assert len(report["large_files"]) == 3


def test_zoo_check_fails_on_a_changed_weights_file(packaged: Path, tmp_path: Path) -> None:
    copy = tmp_path / packaged.name
    shutil.copytree(packaged, copy)
    with open(copy / "models" / "gdc2.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(RuntimeError, match="download_large_files"):
        zoo.check(copy)


def test_unpacked_bundle_runs_inference_with_nothing_from_the_repo(packaged: Path, inputs: Path, tmp_path) -> None:
    probe = "import sys, scripts; print(scripts.__file__); print(sys.path)"
    found = subprocess.run([sys.executable, "-c", probe], cwd=packaged, env=ENV, capture_output=True, text=True)
    module, path = found.stdout.splitlines()
    assert Path(module).resolve().is_relative_to(packaged.resolve())
    repo_entries = [e for e in ast.literal_eval(path) if e and Path(e).resolve().is_relative_to(REPO)]
    assert all(Path(e).resolve().is_relative_to(REPO / ".venv") for e in repo_entries), repo_entries  # packages only
    out = tmp_path / "out"
    cmd = ["-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml", "--input_dir", str(inputs)]
    cmd += ["--output_dir", str(out), "--preprocessing#transforms#4#conf", "0.0"]  # an untrained detector finds
    done = subprocess.run([sys.executable, *cmd], cwd=packaged, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rec = json.loads((out / "xray0.json").read_text())
    assert rec["threshold"] == pytest.approx(0.4) and 0.0 <= rec["fracture_probability"] <= 1.0
    assert "error" in json.loads((out / "broken.json").read_text())


def test_two_zoo_bundles_with_a_scripts_package_in_one_environment(packaged: Path, tmp_path: Path) -> None:
    """Another Zoo bundle's own ``scripts`` is what its configs import: ours is not installed in the environment."""
    other = tmp_path / "other_bundle"
    (other / "configs").mkdir(parents=True)
    (other / "scripts").mkdir()
    (other / "scripts" / "__init__.py").write_text("NAME = 'other bundle'\n")
    (other / "configs" / "inference.yaml").write_text(
        "imports: ['$import scripts']\nrun: [\"$print('scripts of', scripts.NAME)\"]\n"
    )
    for bundle, expected in ((other, "scripts of other bundle"), (packaged, str(packaged))):
        cmd = ["-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml"]
        if bundle is packaged:
            cmd += ["--run", "$print(scripts.bundle_root())"]
        done = subprocess.run([sys.executable, *cmd], cwd=bundle, env=ENV, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert expected in done.stdout
