"""Every stage config merges and resolves under every profile, the way the pipeline and the CLI read it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver

from scripts import BUNDLE_ROOT
from scripts.pipeline import profile_file, stage_files

CONFIGS = BUNDLE_ROOT / "configs"
PROFILES = sorted(p.stem for p in (CONFIGS / "profiles").glob("*.yaml"))
STAGES = ConfigParser.load_config_file(CONFIGS / "train.yaml")["stages"]


def _parser(files: list[str]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(files)
    return parser


def _missing_references(parser: ConfigParser) -> list[str]:
    refs = ReferenceResolver.find_refs_in_config(parser.get(), id="")
    return sorted(r for r in refs if r not in parser)


def test_profiles_are_the_documented_ones() -> None:
    assert PROFILES == ["paper", "quick", "quick_efficientnet", "quick_sites", "tiny"]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("kind", ["train", "evaluate"])
@pytest.mark.parametrize("stage", [s["name"] for s in STAGES])
def test_stage_config_merges_and_every_reference_exists(stage: str, kind: str, profile: str) -> None:
    spec = next(s for s in STAGES if s["name"] == stage)
    files = stage_files(spec, kind, profile)
    parser = _parser(files)  # a profile key naming a missing section raised KeyError here before
    assert not _missing_references(parser), f"{stage} {kind} {profile}: undefined references"
    values = parser.get_parsed_content(stage)  # the stage's hyperparameters resolve (expressions included)
    assert isinstance(values, dict) and values
    assert parser.get_parsed_content("stage_name") == stage


def test_paper_profile_sets_the_thesis_values() -> None:
    spec = next(s for s in STAGES if s["name"] == "classifier")
    parser = _parser(stage_files(spec, "train", "paper"))
    assert parser.get_parsed_content("classifier#model_name") == "efficientnet-b3"
    assert parser.get_parsed_content("classifier#augment#rotate_deg") == 54
    assert parser.get_parsed_content("crop_size") == 256
    assert parser.get_parsed_content("detector#train_args#nbs") == 64
    quick = _parser(stage_files(spec, "train", "quick"))
    assert quick.get_parsed_content("classifier#model_name") == "convnet"


@pytest.mark.parametrize("profile", PROFILES)
def test_networks_build_under_every_profile(profile: str) -> None:
    """The classifier and the G-D networks are instantiated from the configs as a profile sets them."""
    import torch

    for stage, key in (("classifier", "network_def"), ("gd", "network_def"), ("gd", "discriminator_def")):
        spec = next(s for s in STAGES if s["name"] == stage)
        parser = _parser(stage_files(spec, "train", profile))
        parser["classifier#pretrained"] = False  # offline: the ImageNet start has its own tests
        net = parser.get_parsed_content(key)
        size = parser.get_parsed_content("crop_size")
        with torch.no_grad():
            out = net.eval()(torch.rand(1, 1, size, size))
        assert torch.isfinite(out if isinstance(out, torch.Tensor) else out[-1]).all()


def test_profile_by_name_or_path(tmp_path: Path) -> None:
    assert profile_file("paper") == CONFIGS / "profiles" / "paper.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("classifier#epochs: 2\n")
    assert profile_file(str(own)) == own
    with pytest.raises(FileNotFoundError, match="nope"):
        profile_file("nope")


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.name)
def test_no_long_yaml_expressions(path: Path) -> None:
    """Logic belongs in scripts/: no expression in a config runs over 120 characters."""
    long = [s for s in _strings(yaml.safe_load(path.read_text())) if s.startswith("$") and len(s) > 120]
    assert not long, f"{path.name}: {long[0][:80]}..."


def test_no_empty_placeholder_namespaces() -> None:
    for path in sorted(CONFIGS.rglob("*.yaml")):
        assert not re.search(r"^\w+: \{\}\s*$", path.read_text(), flags=re.M), path.name


@pytest.mark.parametrize(
    ("stage", "data_format"), [("classifier", "network_data_format"), ("gd", "generator_data_format")]
)
def test_verify_net_in_out_on_each_stage_network_def(stage: str, data_format: str, tmp_path: Path) -> None:
    """MONAI's ``verify_net_in_out`` on the training configs' ``network_def`` (C; G-D's generator), against the
    input/output format metadata.json gives that network."""
    import json
    import os
    import subprocess
    import sys

    meta = json.loads((CONFIGS / "metadata.json").read_text())
    meta["network_data_format"] = meta[data_format]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    spec = next(s for s in STAGES if s["name"] == stage)
    files = [f for f in stage_files(spec, "train", "quick") if not f.endswith("quick.yaml")]
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def"]
    cmd += ["--meta_file", str(tmp_path / "metadata.json"), "--config_file", str(files)]
    env = {**os.environ, "PYTHONPATH": str(BUNDLE_ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "data shape of network is verified with no error" in done.stdout + done.stderr
