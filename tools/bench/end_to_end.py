"""The inference path itself: one X-ray split by step in a warm process, the batch command over a growing folder
(with and without DICOM outputs), and the command's cold start.

- ``warm_split``: ``clinic.engine.WarmInference`` (the bundle's inference.yaml, files written before each call
  returns) with a timer around each preprocessing transform, each network's forward pass (forward hooks) and each
  writing step (``WriteFractureOutputsd.timer``); "other" is what is left of the call (data loader, collation,
  the engine's events, decollation).
- ``batch_scaling``: the batch workflow of ``python -m monai.bundle run`` (in process, as ``run_inference``) over
  the largest folder, with the time at which each file's ``summary.csv`` row is appended (its files written):
  the times at 50, 100, 200 and 400 files show whether the cost grows linearly.
- ``cold_start``: the command on one image in a new Python process, wall time, with ``-X importtime``'s share of
  the imports that dominate it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .stats import summary

DETECT_FLOOR = "preprocessing#transforms#4#conf"  # DetectNasalBoned's confidence floor (0: an untrained detector finds)
NETWORK_STEPS = ("detector network", "classifier network", "generator network")


def phantom_images(out: Path, n: int, size: int = 512, seed: int = 11) -> list[Path]:
    """``n`` phantom head X-rays (16-bit PNG, about half fractured) written once into ``out``."""
    from tools.phantom.dataset import write_dataset

    images = out / "images"
    if not images.is_dir() or len(list(images.glob("*.png"))) < n:
        shutil.rmtree(out, ignore_errors=True)
        write_dataset(out, n_images=n, fracture_rate=0.5, seed=seed, size=size, formats={"png16": 1.0})
    return sorted(images.glob("*.png"))[:n]


def folder_of(images: list[Path], n: int, out: Path) -> Path:
    """A folder of ``n`` files, the ``images`` repeated (hard links when possible)."""
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        target = out / f"x{i:04d}.png"
        if not target.exists():
            try:
                os.link(images[i % len(images)], target)
            except OSError:
                shutil.copy(images[i % len(images)], target)
    return out


class Recorder:
    """Seconds per named step, accumulated per image."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.current: dict[str, float] = defaultdict(float)
        self.starts: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.current[name] += time.perf_counter() - start

    def begin(self, name: str) -> None:
        self.starts[name] = time.perf_counter()

    def end(self, name: str) -> None:
        self.current[name] += time.perf_counter() - self.starts.pop(name)

    def image_done(self) -> None:
        for name, value in self.current.items():
            self.seconds[name].append(value)
        self.current = defaultdict(float)

    def reset(self) -> None:
        self.seconds.clear()
        self.current = defaultdict(float)


class Timed:
    """A transform timed under ``name`` (the wrapped transform is called as it is)."""

    def __init__(self, transform: Any, name: str, recorder: Recorder) -> None:
        self.transform, self.name, self.recorder = transform, name, recorder

    def __call__(self, data: Any) -> Any:
        with self.recorder.step(self.name):
            return self.transform(data)


STEP_NAMES = {
    "CheckHeadRadiographd": "input guard",
    "LoadXrayd": "load",
    "EnsureChannelFirstd": "channel first",
    "CopyItemsd": "copy full image",
    "DetectNasalBoned": "detect (letterbox, crop)",
    "FlagCropIntensityd": "crop intensity check",
}


def _hook(module: torch.nn.Module, name: str, recorder: Recorder) -> None:
    module.register_forward_pre_hook(lambda *_: recorder.begin(name))
    module.register_forward_hook(lambda *_: recorder.end(name))


def instrument(parser, recorder: Recorder) -> None:
    """Timers on a parsed inference config's preprocessing, networks and writer (the objects the evaluator runs)."""
    preprocessing = parser.get_parsed_content("preprocessing")
    transforms = list(preprocessing.transforms)
    for i, t in enumerate(transforms):
        name = STEP_NAMES.get(type(t).__name__, type(t).__name__)
        if hasattr(t, "detector"):  # (bundles before ONNX Runtime had only the torch model)
            _hook(getattr(t.detector, "network", None) or t.detector.model, "detector network", recorder)
        transforms[i] = Timed(t, name, recorder)
    preprocessing.transforms = tuple(transforms)
    _hook(parser.get_parsed_content("network"), "classifier network", recorder)
    _hook(parser.get_parsed_content("region_def"), "generator network", recorder)
    for t in parser.get_parsed_content("postprocessing").transforms:
        if hasattr(t, "timer"):
            t.timer = lambda step: recorder.step(f"write: {step}")


def _per_image(recorder: Recorder) -> dict[str, Any]:
    return {name: summary(values) for name, values in recorder.seconds.items()}


def warm_split(
    models_dir: Path, images: list[Path], out: Path, runtime: str, overrides: dict, rounds: int = 2
) -> dict[str, Any]:
    """One X-ray at a time through ``WarmInference`` (``runtime``), split by step; per-image medians in seconds."""
    from clinic.engine import WarmInference

    engine = WarmInference(out, models_dir, device="cpu", overrides={"runtime": runtime, **overrides})
    recorder = Recorder()
    instrument(engine.workflow.parser, recorder)
    for path in images[:2]:  # warm-up
        engine.predict(path, "warmup")
    recorder.reset()
    walls = []
    findings: dict[str, int] = defaultdict(int)
    for r in range(rounds):
        for i, path in enumerate(images):
            record, seconds = engine.timed_predict(path, f"r{r}_{i}")
            walls.append(seconds)
            recorder.image_done()
            findings[str(record.get("finding", "error"))] += 1
    detect, nested = recorder.seconds.get(STEP_NAMES["DetectNasalBoned"]), recorder.seconds.get("detector network")
    if detect and nested:  # the detector's forward pass runs inside the transform: counted once, as a network
        recorder.seconds[STEP_NAMES["DetectNasalBoned"]] = [d - n for d, n in zip(detect, nested, strict=True)]
    steps = _per_image(recorder)
    network = [sum(v) for v in zip(*(recorder.seconds[n] for n in NETWORK_STEPS if n in recorder.seconds), strict=True)]
    known = [sum(v) for v in zip(*recorder.seconds.values(), strict=True)]
    wall = summary(walls)
    nets = summary(network)
    other = summary([w - k for w, k in zip(walls, known, strict=True)])
    return {
        "runtime": runtime,
        "images": len(walls),
        "threads": torch.get_num_threads(),
        "findings": dict(findings),
        "wall_s": wall,
        "networks_s": nets,
        "steps_s": {**steps, "other (loader, collate, engine, decollate)": other},
        "ratio_to_networks": wall["median"] / nets["median"] if nets["median"] else None,
    }


def batch_run(
    models_dir: Path, folder: Path, out: Path, overrides: dict, dicom_out: bool, marks: tuple[int, ...]
) -> dict[str, Any]:
    """The batch workflow over ``folder``: seconds until each mark's row is written, networks' time per image."""
    from monai.bundle import ConfigWorkflow

    from scripts import BUNDLE_ROOT
    from scripts.inference_writer import InferenceSummary

    shutil.rmtree(out, ignore_errors=True)
    workflow = ConfigWorkflow(
        config_file=str(BUNDLE_ROOT / "configs" / "inference.yaml"),
        meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        input_dir=str(folder),
        output_dir=str(out),
        models_dir=str(models_dir),
        dicom_out=dicom_out,
        tracking_uri=f"sqlite:///{out}/mlflow.db",
        device=torch.device("cpu"),
        **overrides,
    )
    workflow.initialize()
    recorder = Recorder()
    instrument(workflow.parser, recorder)
    summary_handler: InferenceSummary = workflow.parser.get_parsed_content("summary")
    stamps: list[float] = []
    add_row = summary_handler.add_row

    def stamped(item: dict) -> None:
        add_row(item)
        stamps.append(time.perf_counter())

    summary_handler.add_row = stamped
    start = time.perf_counter()
    workflow.run()
    total = time.perf_counter() - start
    workflow.finalize()
    recorder.image_done()
    n = len(stamps)
    network = sum(sum(recorder.seconds[s]) for s in NETWORK_STEPS if s in recorder.seconds) / max(1, n)
    at = {str(m): stamps[m - 1] - start for m in marks if m <= n}
    first, last = marks[0], max(m for m in marks if m <= n)
    steady = (stamps[last - 1] - stamps[first - 1]) / (last - first) if last > first else None
    x = np.array([m for m in marks if m <= n], float)
    y = np.array([at[str(int(m))] for m in x])
    slope, intercept = np.polyfit(x, y, 1) if len(x) > 1 else (None, None)
    return {
        "dicom_out": dicom_out,
        "images": n,
        "total_s": total,
        "seconds_at": at,
        "per_image_s_steady": steady,
        "linear_fit": {"seconds_per_image": slope, "intercept_s": intercept},
        "networks_s_per_image": network,
        "ratio_to_networks": steady / network if steady and network else None,
    }


IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")
TOP_IMPORTS = ("torch", "monai", "ultralytics", "ignite", "mlflow", "onnxruntime", "onnx", "pydicom", "highdicom")


def cold_start(models_dir: Path, image: Path, out: Path, overrides: dict, repeat: int = 2) -> dict[str, Any]:
    """Wall seconds of ``python -m monai.bundle run`` on one image in a new process, and its slowest imports."""
    from scripts import BUNDLE_ROOT

    walls, imports = [], {}
    for r in range(repeat):
        cmd = [sys.executable, "-X", "importtime", "-m", "monai.bundle", "run"]
        cmd += ["--config_file", str(BUNDLE_ROOT / "configs" / "inference.yaml")]
        cmd += ["--input_dir", str(image), "--output_dir", str(out / f"cold{r}"), "--models_dir", str(models_dir)]
        cmd += ["--tracking_uri", f"sqlite:///{out}/cold{r}.db"]
        for key, value in overrides.items():
            cmd += [f"--{key}", str(value)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BUNDLE_ROOT), os.environ.get("PYTHONPATH", "")])}
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        walls.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise RuntimeError(f"the inference command failed: {result.stderr[-2000:]}")
        for line in result.stderr.splitlines():
            m = IMPORT_LINE.search(line)
            if m and len(m.group(3)) <= 1 and m.group(4) in TOP_IMPORTS:  # top-level imports only
                imports[m.group(4)] = int(m.group(2)) / 1e6
    return {"wall_s": summary(walls), "top_level_imports_s": imports}
