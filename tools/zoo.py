"""MONAI Model Zoo packaging and checks for the bundle folder.

``package``: a versioned zip of the bundle (configs, scripts, docs, LICENSE, and the weights or only their
``large_files.yml``) that unpacks into a folder MONAI's tools run from, like any Zoo bundle.
``check``: what the Model Zoo's CI verifies for a bundle (``ci/verify_bundle.py`` in Project-MONAI/model-zoo),
done with MONAI's own tools: necessary files, version in the changelog, ``verify_metadata`` against the schema
kept in the repo (offline), every weights file listed in ``large_files.yml`` with a matching sha256
(``download_large_files`` checks existing files and downloads nothing), ``verify_net_in_out`` for the
inference config's ``network_def`` (classifier C, ``network_data_format``) and G-D's generator (``gd.yaml``,
``generator_data_format``), and ``ckpt_export`` to
TorchScript with a ``torch.jit.load`` round trip that must give the eager network's output.

    PYTHONPATH=bundle python -m tools.zoo package --out dist            # dist/<name>_v<version>.zip
    PYTHONPATH=bundle python -m tools.zoo check bundle                 # the repo's bundle (weights needed)
    PYTHONPATH=bundle python -m tools.zoo check dist/<name>_v<version>.zip
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

from . import BUNDLE_ROOT

BUNDLE_NAME = "nasal_bone_fracture_xray"
CONTENTS = ("configs", "scripts", "docs", "LICENSE")
WEIGHT_SUFFIXES = (".pt", ".ts", ".onnx")
SCHEMA = "configs/schema/meta_schema_20240725.json"
INFERENCE = "configs/inference.yaml"
# the classifier C is the bundle's `network_def` (metadata's network_data_format); its weights file and the key
# of its state dict inside it (scripts/checkpoint.py's self-describing format)
EXPORTS = {"network_def": ("models/classifier.pt", "classifier")}
ATOL = 1e-5  # TorchScript vs eager, float32 on CPU
# G-D's generator (stage 3's network_def), checked against metadata.json's generator_data_format
GENERATOR_DEFS = {
    ("common.yaml", "crop_training.yaml", "gan_common.yaml", "gd.yaml"): "generator_data_format",
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def version(bundle: Path) -> str:
    return json.loads((bundle / "configs" / "metadata.json").read_text())["version"]


def weight_files(bundle: Path) -> list[Path]:
    models = bundle / "models"
    return sorted(p for p in models.glob("*") if p.suffix in WEIGHT_SUFFIXES) if models.is_dir() else []


def write_large_files(bundle: Path, url_prefix: str = "") -> Path:
    """``large_files.yml`` naming every weights file with its sha256 (``url``: where you publish it, if anywhere)."""
    entries = [
        {
            "path": p.relative_to(bundle).as_posix(),
            "url": f"{url_prefix.rstrip('/')}/{p.name}" if url_prefix else "",
            "hash_val": sha256(p),
            "hash_type": "sha256",
        }
        for p in weight_files(bundle)
    ]
    path = bundle / "large_files.yml"
    path.write_text(yaml.safe_dump({"large_files": entries}, sort_keys=False))
    return path


def package(bundle: Path, out_dir: Path, weights: bool = True, url_prefix: str = "") -> Path:
    """Write ``out_dir/<name>_v<version>.zip``: the bundle with its weights (or only ``large_files.yml``)."""
    name = f"{BUNDLE_NAME}_v{version(bundle)}"
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / BUNDLE_NAME
        stage.mkdir()
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for item in CONTENTS:
            src = bundle / item
            if not src.exists():
                raise FileNotFoundError(f"{src}: a Model Zoo bundle needs it")
            (shutil.copytree(src, stage / item, ignore=ignore) if src.is_dir() else shutil.copy2(src, stage / item))
        (stage / "models").mkdir()
        for p in weight_files(bundle):
            shutil.copy2(p, stage / "models" / p.name)
            sidecar = p.with_suffix(".json")
            if sidecar.is_file():
                shutil.copy2(sidecar, stage / "models" / sidecar.name)
        write_large_files(stage, url_prefix)
        if not weights:
            for p in weight_files(stage):
                p.unlink()
        out_dir.mkdir(parents=True, exist_ok=True)
        archive = out_dir / f"{name}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(stage.rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(stage.parent).as_posix())
    return archive


def unpack(archive: Path, dest: Path) -> Path:
    """Unpack a bundle zip into ``dest``; return the bundle folder."""
    with zipfile.ZipFile(archive) as z:
        z.extractall(dest)
    return dest / BUNDLE_NAME


def _monai(bundle: Path, *args: str) -> str:
    """``python -m monai.bundle ARGS`` run from the bundle folder, as the Zoo runs it; output, or raise."""
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the bundle folder itself, nothing else
    done = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:1])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def check(bundle: Path, require_weights: bool = True) -> dict:
    """The Model Zoo CI's checks on an unpacked bundle folder; return what was checked (raise on a failure)."""
    bundle = bundle.resolve()
    report: dict = {"bundle": bundle.name}
    for item in ("configs/metadata.json", "LICENSE", INFERENCE):
        if not (bundle / item).is_file():
            raise FileNotFoundError(f"{bundle / item}: missing (the Model Zoo requires it)")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    if meta["version"] not in meta.get("changelog", {}):
        raise ValueError(f"configs/metadata.json: version {meta['version']} is not in its changelog")
    report["version"] = meta["version"]
    out = _monai(bundle, "verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", SCHEMA)
    if "metadata is verified with no error" not in out:
        raise RuntimeError(f"verify_metadata: {out[-2000:]}")
    report["verify_metadata"] = "ok"

    weights = weight_files(bundle)
    if require_weights and not weights:
        raise FileNotFoundError(f"{bundle / 'models'}: no weights (train first, e.g. make demo)")
    large = bundle / "large_files.yml"
    if weights:
        if not large.is_file():
            raise FileNotFoundError(f"{large}: missing (python -m tools.zoo package writes it)")
        listed = {e["path"]: e for e in yaml.safe_load(large.read_text())["large_files"]}
        unlisted = [p.name for p in weights if p.relative_to(bundle).as_posix() not in listed]
        if unlisted or any(e.get("hash_type") != "sha256" or not e.get("hash_val") for e in listed.values()):
            raise ValueError(f"{large}: every weights file needs a sha256 hash_val (unlisted: {unlisted})")
        _monai(bundle, "download_large_files", "--bundle_path", ".")  # files present: checks hashes, no download
        report["large_files"] = sorted(listed)

    net_ids = list(EXPORTS)  # the networks metadata.json's network_data_format describes
    for net_id in net_ids:
        _monai(bundle, "verify_net_in_out", net_id, "--meta_file", "configs/metadata.json", "--config_file", INFERENCE)
    report["verify_net_in_out"] = [f"inference.yaml {n}" for n in net_ids]
    for config, data_format in GENERATOR_DEFS.items():  # the training configs' other networks, by their own format
        with tempfile.TemporaryDirectory() as tmp:
            meta_file = Path(tmp) / "metadata.json"
            meta_file.write_text(json.dumps({**meta, "network_data_format": meta[data_format]}))
            files = str([f"configs/{f}" for f in config])
            _monai(bundle, "verify_net_in_out", "network_def", "--meta_file", str(meta_file), "--config_file", files)
        report["verify_net_in_out"].append(f"{config[-1]} network_def ({data_format})")

    report["ckpt_export"] = {}
    for net_id, (ckpt, key) in EXPORTS.items():
        if not (bundle / ckpt).is_file():
            if require_weights:
                raise FileNotFoundError(f"{bundle / ckpt}: missing")
            continue
        report["ckpt_export"][net_id] = _torchscript_round_trip(bundle, net_id, ckpt, key)
    return report


def _torchscript_round_trip(bundle: Path, net_id: str, ckpt: str, key: str) -> float:
    """``ckpt_export`` then ``torch.jit.load``: the largest difference from the eager network on random input."""
    import torch
    from monai.bundle import ConfigParser

    with tempfile.TemporaryDirectory() as tmp:
        ts = Path(tmp) / f"{net_id}.ts"
        # traced (FractureClassifier does not script), on the metadata's input shape
        _monai(bundle, "ckpt_export", net_id, "--filepath", str(ts), "--ckpt_file", ckpt, "--key_in_ckpt", key,
               "--use_trace", "True", "--meta_file", "configs/metadata.json", "--config_file", INFERENCE)  # fmt: skip
        sys.path.insert(0, str(bundle))
        try:
            parser = ConfigParser()
            parser.read_config(bundle / INFERENCE)
            parser.read_meta(bundle / "configs" / "metadata.json")
            parser["models_dir"] = str(bundle / "models")
            net = parser.get_parsed_content(net_id)
            state = torch.load(bundle / ckpt, map_location="cpu", weights_only=True)[key]
            net.load_state_dict(state)
        finally:
            sys.path.remove(str(bundle))
        shape = parser.get("_meta_#network_data_format#inputs#image#spatial_shape")
        channels = parser.get("_meta_#network_data_format#inputs#image#num_channels")
        x = torch.rand(2, channels, *shape)
        with torch.no_grad():
            diff = (torch.jit.load(str(ts))(x) - net.eval()(x)).abs().max().item()
    if diff > ATOL:
        raise AssertionError(f"TorchScript export of {net_id} differs from eager by {diff:.2e} (> {ATOL})")
    return diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("package", help="write a versioned bundle zip")
    p.add_argument("--bundle", type=Path, default=BUNDLE_ROOT)
    p.add_argument("--out", type=Path, default=Path("dist"))
    p.add_argument("--no-weights", action="store_true", help="only large_files.yml, not the weights themselves")
    p.add_argument("--url-prefix", default="", help="where the weights will be downloadable from")
    c = sub.add_parser("check", help="the Model Zoo CI's checks on a bundle folder or zip")
    c.add_argument("bundle", type=Path)
    args = parser.parse_args()
    if args.command == "package":
        archive = package(args.bundle, args.out, weights=not args.no_weights, url_prefix=args.url_prefix)
        print(f"wrote {archive} ({archive.stat().st_size / 1e6:.1f} MB)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        target = args.bundle
        if target.suffix == ".zip":
            target = unpack(target, Path(tmp))
        elif not (target / "large_files.yml").is_file():  # the repo's bundle: check what `package` would ship
            target = unpack(package(target, Path(tmp) / "zip"), Path(tmp))
        print(json.dumps(check(target), indent=2))
        print("Model Zoo checks passed")


if __name__ == "__main__":
    main()
