"""The thesis's recipe, shortened: the whole chain with the `paper` profile on a small phantom, one epoch a stage.

Every stage keeps the paper profile's networks (YOLOv5u at 512 px, EfficientNetBN-b3 on 256 px RGB crops, the
thesis's BasicUNet and D), input sizes and batch sizes; only the number of epochs is cut to one, so that it
finishes on a CPU. It shows that a user with a GPU can start the thesis's recipe as it is
(``make train PROFILE=paper``), not what it learns. Writes ``<out>/paper_smoke.json`` with the times.

    PYTHONPATH=bundle python -m tools.paper_smoke --out runs/paper_smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import BUNDLE_ROOT

STAGES = ("detector", "classifier", "gd", "gdc1", "gdc2")
# 96 images: 76 training crops, more than one of the paper's classifier batches (64); 512 px like the phantom's
N_IMAGES, SIZE = 96, 512
TIMES = ("train_seconds", "evaluate_seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/paper_smoke"))
    parser.add_argument("--n", type=int, default=N_IMAGES)
    parser.add_argument(
        "--pretrained_weights", default=None, help="EfficientNet-b3 ImageNet weights file: C starts from it (thesis)"
    )
    args = parser.parse_args()
    from .phantom import write_dataset

    data, out = args.out / "data", args.out / "run"
    start = time.perf_counter()
    if not (data / "dataset.csv").is_file():
        write_dataset(data, n_images=args.n, fracture_rate=0.5, seed=7, size=SIZE)
    # one epoch a stage; C from scratch (the ImageNet start needs a download or a file: --pretrained_weights)
    one_epoch = {f"{stage}#epochs": 1 for stage in STAGES}
    one_epoch.update({"classifier#pretrained": bool(args.pretrained_weights)})
    if args.pretrained_weights:
        one_epoch["classifier#pretrained_weights"] = str(Path(args.pretrained_weights).resolve())
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", str(BUNDLE_ROOT / "configs" / "train.yaml"),
        "--profile", "paper",
        "--dataset_dir", str(data),
        "--output_dir", str(out),
        "--models_dir", str(out / "models"),
        "--retrain", "True",
        "--stage_args", json.dumps(one_epoch),
    ]  # fmt: skip
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    chain = time.perf_counter() - t0
    pipeline = json.loads((out / "pipeline.json").read_text())
    summary = {
        "profile": "paper",
        "images": args.n,
        "epochs_per_stage": 1,
        "chain_seconds": round(chain, 1),
        "total_seconds_with_data": round(time.perf_counter() - start, 1),
        "stages": {
            k: {t: v.get(t) for t in ("train_seconds", "evaluate_seconds")} for k, v in pipeline["stages"].items()
        },
        "status": pipeline["status"],
    }
    (args.out / "paper_smoke.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if pipeline["status"] != "FINISHED":
        raise SystemExit("paper smoke run did not finish")


if __name__ == "__main__":
    main()
