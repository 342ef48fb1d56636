"""``make bench``: speed and memory of the parts a user waits for, against stated goals.

Measures the phantom generator (images/s, one core), image loading per format, and end-to-end
inference per image (detector + classifier + G-D-C step-2 map + overlay) with the peak resident
memory, using the weights in ``models_dir`` (that part is skipped when they are missing).
Writes ``<out>/bench.json`` and prints a table; exits non-zero if a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import BUNDLE_ROOT

GOALS = {"phantom_images_per_s": 20.0, "inference_seconds_per_image": 2.0, "inference_peak_rss_gib": 4.0}


def _timeit(fn, repeat: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def bench_phantom(n: int = 40) -> float:
    from tools.phantom import render_patient

    torch.set_num_threads(1)
    start = time.perf_counter()
    for i in range(n // 2):
        render_patient(i, fracture=bool(i % 2), n_views=2, size=512)
    torch.set_num_threads(2)
    return n / (time.perf_counter() - start)


def bench_loading(tmp: Path) -> dict[str, float]:
    from scripts.imageio import KINDS, load_xray, save_xray

    img = np.random.default_rng(0).random((512, 512)).astype(np.float32)
    paths = {kind: save_xray(tmp / kind, img, kind) for kind in KINDS}
    return {kind: 1000 * _timeit(lambda p=path: load_xray(p), 10) for kind, path in paths.items()}


def bench_inference(models_dir: Path, n: int = 10) -> dict[str, float] | None:
    from scripts.inference import FracturePipeline
    from tools.phantom import render_patient

    if not all((models_dir / w).is_file() for w in ("detector.pt", "classifier.pt", "gdc2.pt")):
        return None
    pipeline = FracturePipeline(models_dir)
    images = [v.image for i in range(n // 2) for v in render_patient(10_000 + i, fracture=bool(i % 2), size=512)]
    pipeline(images[0])
    start = time.perf_counter()
    for img in images:
        pipeline(img)
    seconds = (time.perf_counter() - start) / len(images)
    return {"seconds_per_image": seconds, "device": str(pipeline.device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--models_dir", default=str(BUNDLE_ROOT / "models"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"threads": torch.get_num_threads()}
    results["phantom_images_per_s"] = bench_phantom()
    with tempfile.TemporaryDirectory() as tmp:
        results["load_ms_512px"] = bench_loading(Path(tmp))
    inference = bench_inference(Path(args.models_dir))
    if inference:
        results["inference_seconds_per_image"] = inference["seconds_per_image"]
        results["inference_device"] = inference["device"]
    results["inference_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    (out / "bench.json").write_text(json.dumps({"results": results, "goals": GOALS}, indent=2))
    missed = []
    print(f"{'measure':34s} {'value':>10s} {'goal':>10s}")
    for key, goal in GOALS.items():
        if key not in results:
            print(f"{key:34s} {'skipped':>10s} {goal:10.2f}  (no trained weights in {args.models_dir})")
            continue
        ok = results[key] >= goal if key.endswith("per_s") else results[key] <= goal
        missed += [] if ok else [key]
        print(f"{key:34s} {results[key]:10.2f} {goal:10.2f}  {'ok' if ok else 'MISSED'}")
    for kind, ms in results["load_ms_512px"].items():
        print(f"{'load ' + kind + ' (ms)':34s} {ms:10.1f}")
    print(f"written {out / 'bench.json'}")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
