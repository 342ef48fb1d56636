"""``make demo``: phantom data, every stage trained (quick profile), evaluated, inference, report.

Each step is the command a user would type (printed before it runs), so the demo exercises exactly
the documented interface. Rerunning skips the phantom and stages whose outputs already exist.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from . import BUNDLE_ROOT

CONFIGS = BUNDLE_ROOT / "configs"


def _step(title: str, cmd: list[str], t0: float) -> None:
    print(f"\n=== [{time.perf_counter() - t0:6.0f} s] {title}\n$ {shlex.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": bundle_pythonpath()})


def bundle_pythonpath() -> str:
    """PYTHONPATH with the bundle folder first, so that its configs' ``$import scripts`` resolves."""
    rest = os.environ.get("PYTHONPATH", "")
    return str(BUNDLE_ROOT) + (os.pathsep + rest if rest else "")


def held_out_folder(dataset_dir: Path, split_file: Path, out: Path, extra_bad_file: bool = True) -> Path:
    """Links to the test split's images (their original mixed formats), plus one broken file."""
    out.mkdir(parents=True, exist_ok=True)
    with open(split_file, newline="", encoding="utf-8-sig") as f:
        test = [row["image"] for row in csv.DictReader(f) if row["split"] == "test"]
    for rel in test:
        link = out / Path(rel).name
        if not link.exists():
            link.symlink_to((dataset_dir / rel).resolve())
    if extra_bad_file:  # shows that a bad file is reported and the batch goes on
        (out / "corrupt_upload.dcm").write_bytes(b"DICM but not really a DICOM file")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="data/phantom")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--retrain", action="store_true", help="retrain stages whose weights exist")
    args = parser.parse_args()
    t0 = time.perf_counter()
    py = sys.executable
    data, out = Path(args.data), Path(args.out)
    if not (data / "dataset.csv").is_file():
        _step(
            f"Phantom: {args.n} lateral head X-rays",
            [py, "-m", "tools.phantom", "--out", str(data), "--n", str(args.n), "--seed", "0"],
            t0,
        )
    else:
        print(f"=== phantom dataset exists at {data} (delete it to regenerate)")
    _step(
        "Training and evaluating every stage",
        [
            py,
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            str(CONFIGS / "train.yaml"),
            "--profile",
            args.profile,
            "--dataset_dir",
            str(data),
            "--output_dir",
            str(out),
            "--retrain",
            str(args.retrain),
        ],
        t0,
    )
    held_out = held_out_folder(data, out / "split.csv", out / "held_out_images")
    _step(
        "Inference on the held-out test images (mixed formats, DICOM outputs)",
        [
            py,
            "-m",
            "monai.bundle",
            "run",
            "inference",
            "--config_file",
            str(CONFIGS / "inference.yaml"),
            "--input_dir",
            str(held_out),
            "--output_dir",
            str(out / "inference"),
            "--dicom_out",
            "True",
            "--tracking_uri",
            f"sqlite:///{(out / 'mlflow.db').resolve()}",
        ],
        t0,
    )
    _step("Report", [py, "-m", "tools.report", str(out), "--inference_dir", str(out / "inference")], t0)
    _step("Test split by file format (detector and classifier)", [py, "-m", "tools.format_table", str(out)], t0)
    print(
        f"\nDone in {(time.perf_counter() - t0) / 60:.1f} min.\n"
        f"  Report:  {(out / 'report.html').resolve()}\n"
        f"  MLflow:  .venv/bin/mlflow ui --backend-store-uri sqlite:///{(out / 'mlflow.db').resolve()}\n"
        f"  Weights: {BUNDLE_ROOT / 'models'}"
    )


if __name__ == "__main__":
    main()
