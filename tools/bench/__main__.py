"""``python -m tools.bench [--out bench] [--quick]``: the whole benchmark, ``<out>/results.json`` and ``results.md``.

``--quick`` is the tests' mode (seconds): the tiny profile's networks without exports, a few small images, two and
four files in the batch, no cold start; the figures mean nothing, the code paths are the full run's.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from scripts import BUNDLE_ROOT
from tools import REPO_ROOT

from . import end_to_end, gemm, networks, training
from .table import markdown
from .weights import have_trained, untrained_models

RUNTIMES = ("torch", "onnxruntime")


def _networks(device: str, quick: bool, peak: float, log) -> list[dict[str, Any]]:
    rows = []
    for profile in ("tiny",) if quick else ("quick", "paper"):
        paper = profile == "paper"
        for net in networks.build(profile):
            start = time.perf_counter()
            row = networks.measure(
                net,
                device,
                peak,
                repeat=2 if quick else (3 if paper else 10),
                batches=(1, 2) if quick else ((1, 4) if paper else (1, 8)),
                train_batch=2 if quick or paper else None,
                train_iterations=1 if quick or paper else 2,
                with_exports=not quick,
            )
            rows.append({"profile": profile, **row})
            log(f"{device} {profile} {net.name}: {time.perf_counter() - start:.0f} s")
    return rows


def _end_to_end(models_dir: Path, work: Path, quick: bool, cold: bool, log) -> dict[str, Any]:
    trained = have_trained(models_dir) and not quick
    overrides = {} if trained else {end_to_end.DETECT_FLOOR: 0.0}
    images = end_to_end.phantom_images(work / "phantom", 3 if quick else 16, size=128 if quick else 512)
    shown = models_dir.resolve()  # named relative to the repository, never by this machine's folders
    shown = shown.relative_to(REPO_ROOT) if shown.is_relative_to(REPO_ROOT) else Path(shown.name)
    result: dict[str, Any] = {"weights": shown.as_posix(), "trained": trained, "warm": [], "batch": []}
    for runtime in RUNTIMES:
        start = time.perf_counter()
        split = end_to_end.warm_split(
            models_dir, images, work / f"warm_{runtime}", runtime, overrides, 1 if quick else 2
        )
        result["warm"].append(split)
        log(f"warm {runtime}: {time.perf_counter() - start:.0f} s")
    marks = (2, 4) if quick else (50, 100, 200, 400)
    folder = end_to_end.folder_of(images, marks[-1], work / f"folder_{marks[-1]}")
    for dicom in (False, True):
        start = time.perf_counter()
        run = end_to_end.batch_run(models_dir, folder, work / f"batch_dicom{dicom}", overrides, dicom, marks)
        result["batch"].append(run)
        log(f"batch dicom={dicom}: {time.perf_counter() - start:.0f} s")
    if cold:
        start = time.perf_counter()
        result["cold_start"] = end_to_end.cold_start(models_dir, images[0], work / "cold", overrides, repeat=2)
        log(f"cold start: {time.perf_counter() - start:.0f} s")
        result["service"] = _service(models_dir, overrides, log)
    return result


def _service(models_dir: Path, overrides: dict, log) -> dict[str, Any] | None:
    """Warm ``POST /predict`` over HTTP (``clinic.service_bench``), when the service's packages are installed."""
    try:
        from clinic.service_bench import bench_service
    except ImportError as err:
        log(f"service: skipped ({err})")
        return None
    start = time.perf_counter()
    figures = bench_service(models_dir, requests=30, clients=4, device="cpu", overrides=overrides)
    log(f"service: {time.perf_counter() - start:.0f} s")
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench", help="folder of results.json and results.md")
    parser.add_argument("--models_dir", default=str(BUNDLE_ROOT / "models"), help="trained weights, if any")
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run (tests)")
    parser.add_argument("--no_cold_start", action="store_true", help="skip the inference command's cold start")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[bench {time.perf_counter() - began:5.0f} s] {message}", flush=True)

    from scripts.training import set_threads

    threads = set_threads(0)
    import onnxruntime

    results: dict[str, Any] = {"devices": {}}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        peak = gemm.gemm_peak(device, n=256 if args.quick else 1024, repeat=3 if args.quick else 20)
        log(f"{device} GEMM peak {peak['peak_gflops']:.0f} GFLOP/s")
        rows = _networks(device, args.quick, peak["peak_gflops"], log)
        results["devices"][device] = {"gemm": peak, "networks": rows}
    with tempfile.TemporaryDirectory(prefix="nasal_bench_") as tmp:
        work = Path(tmp)
        models_dir = Path(args.models_dir)
        if not have_trained(models_dir) or args.quick and not (models_dir / "detector.pt").is_file():
            models_dir = untrained_models(work / "untrained")
        results["end_to_end"] = _end_to_end(models_dir, work, args.quick, not (args.quick or args.no_cold_start), log)
    iterations = training.stage_iterations("tiny" if args.quick else "quick", 1 if args.quick else 2)
    results["training"] = {"iterations": iterations, "epochs": training.epochs(iterations)}
    log("training stages done")
    trained = results["end_to_end"]["trained"]
    results["meta"] = {
        "command": "make bench" if not args.quick else "python -m tools.bench --quick",
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {threads} CPU threads available, {platform.python_version()}",
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "threads": torch.get_num_threads(),
        "weights": "trained (bundle/models)" if trained else "untrained (detector confidence floor 0)",
        "total_s": time.perf_counter() - began,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    report = markdown(results)
    (out / "results.md").write_text(report)
    print(report)
    log(f"written {out / 'results.json'} and {out / 'results.md'}")
    return results


if __name__ == "__main__":
    main()
