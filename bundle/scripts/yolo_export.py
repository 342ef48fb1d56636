"""The detector's side of Ultralytics: offline switches and the YOLO dataset export.

``prepare_ultralytics`` must run before anything imports ``ultralytics``: it sets the offline
environment (no DNS probe, no pip, no MLflow telemetry), points the settings folder at the run's
output, turns every Ultralytics logging integration off (MLflow metrics are logged by
``scripts.detector`` itself), removes any Ultralytics Platform API key (``ULTRALYTICS_API_KEY`` from this
process's environment, ``api_key`` from the settings) and empties the Platform callbacks that Ultralytics
adds to every trainer (they would upload training logs, metrics and weights), and puts a local font where
Ultralytics looks for ``Arial.ttf`` so that it never downloads one.

``export_yolo_dataset`` writes a data-contract folder in the Ultralytics layout
(``images/<split>/*.png`` as 8-bit grayscale, ``labels/<split>/*.txt`` with one class, ``data.yaml``),
the box of each image being the landmark box (``scripts.geometry.landmark_box``) clipped to the image.
DICOM, NIfTI and 16-bit PNG are converted on the way with ``load_xray``. The export is cached and keyed
by a fingerprint (``scripts.fingerprint``, recorded in ``fingerprint.json``): it is rebuilt, with a log
line saying why, only when the split file, the dataset (``dataset.csv`` and its images) or the margin change.
The split file is made first if absent, with the config's fractions and seed.

Coordinates: ``scripts.geometry`` puts the centre of pixel ``(r, c)`` at ``(x=c, y=r)``, so the image spans
``[-0.5, cols - 0.5]``; Ultralytics puts pixel ``c`` on ``[c, c + 1]``. ``yolo_label`` adds the half pixel.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import fingerprint
from .dataset import landmarks, unique_stems
from .geometry import landmark_box
from .splits import SPLITS, split_records

logger = logging.getLogger(__name__)
CLASS_NAME = "nasal_bone"
EXPORT_VERSION = 2  # 2: fingerprint parts; stems made unique
API_KEY_ENV = "ULTRALYTICS_API_KEY"
UPLOAD_CALLBACKS = ("platform", "hub")  # modules of Ultralytics' Platform callbacks (hub in older versions)
INTEGRATIONS = ("sync", "mlflow", "tensorboard", "wandb", "comet", "clearml", "dvc", "neptune", "raytune", "hub")


def prepare_ultralytics(config_dir: str | Path | None = None) -> Path:
    """Make Ultralytics offline and quiet; return its settings folder (``USER_CONFIG_DIR``).

    ``config_dir`` becomes ``YOLO_CONFIG_DIR`` if Ultralytics is not imported yet (settings then live in
    ``<config_dir>/Ultralytics``); without one, an existing ``YOLO_CONFIG_DIR`` is kept, else a folder in the
    system's temporary directory is used. Once imported, the folder is fixed and is only completed with the font.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    # weights are data: Ultralytics loads its checkpoints with weights_only=True and an allow-list, and builds
    # models without eval() (scripts.detector also checks detector.pt itself)
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    if os.environ.pop(API_KEY_ENV, None):
        logger.warning("%s is set: removed for this process (Ultralytics would upload to its Platform)", API_KEY_ENV)
    if "ultralytics" not in sys.modules and (config_dir is not None or not os.environ.get("YOLO_CONFIG_DIR")):
        # inference alone (no config_dir): a temporary folder rather than the user's ~/.config
        config_dir = Path(config_dir if config_dir is not None else Path(tempfile.gettempdir()) / "nasal_ultralytics")
        config_dir.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir.resolve())
    import matplotlib
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    # Ultralytics reads ULTRALYTICS_SAFE_LOAD once, at import: if something imported it before this call, switch
    # its restricted loading on where it keeps the flag (module constants of ultralytics.utils and .nn.tasks)
    for module in ("ultralytics.utils", "ultralytics.nn.tasks"):
        loaded = sys.modules.get(module)
        if loaded is not None and hasattr(loaded, "SAFE_LOAD"):
            loaded.SAFE_LOAD = True
    for name in UPLOAD_CALLBACKS:  # add_integration_callbacks gives every trainer these dicts' (uploading) callbacks
        try:
            importlib.import_module(f"ultralytics.utils.callbacks.{name}").callbacks.clear()
        except ImportError:
            continue

    font = Path(USER_CONFIG_DIR) / "Arial.ttf"
    if not font.is_file():
        font.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", font)
    off: dict[str, bool | str] = {k: False for k in INTEGRATIONS if k in SETTINGS}
    if SETTINGS.get("api_key"):
        off["api_key"] = ""
    if any(SETTINGS.get(k) for k in off):
        SETTINGS.update(off)
    return Path(USER_CONFIG_DIR)


def clip_to_image(box, shape) -> np.ndarray:
    """Clip ``[x1, y1, x2, y2]`` to the image extent ``[-0.5, cols - 0.5] x [-0.5, rows - 0.5]``."""
    h, w = shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array(
        [np.clip(x1, -0.5, w - 0.5), np.clip(y1, -0.5, h - 0.5), np.clip(x2, -0.5, w - 0.5), np.clip(y2, -0.5, h - 0.5)]
    )


def target_box(record: dict, shape, margin: float) -> np.ndarray:
    """The training/evaluation box of a record: its landmark box clipped to the image."""
    return clip_to_image(landmark_box(*landmarks(record), margin=margin), shape)


def yolo_label(box, shape) -> tuple[float, float, float, float]:
    """Normalised YOLO ``(x_centre, y_centre, width, height)`` of a pixel box (``scripts.geometry`` convention)."""
    h, w = shape[:2]
    x1, y1, x2, y2 = clip_to_image(box, shape) + 0.5  # to Ultralytics' pixel-edge coordinates, [0, w] x [0, h]
    return (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h


def box_from_yolo_label(label, shape) -> np.ndarray:
    """Inverse of ``yolo_label``: the pixel box ``[x1, y1, x2, y2]``."""
    h, w = shape[:2]
    xc, yc, bw, bh = (float(v) for v in label)
    return np.array([(xc - bw / 2) * w, (yc - bh / 2) * h, (xc + bw / 2) * w, (yc + bh / 2) * h]) - 0.5


def export_parts(dataset_dir: str | Path, split_file: str | Path, margin: float) -> dict:
    """What an export is made from (the parts of its fingerprint)."""
    return {
        "split": fingerprint.file_fingerprint(split_file),
        "dataset": fingerprint.dataset_fingerprint(dataset_dir),
        "margin": round(float(margin), 6),
        "version": EXPORT_VERSION,
    }


def export_yolo_dataset(
    dataset_dir: str | Path,
    split_file: str | Path,
    out_dir: str | Path,
    margin: float,
    fractions=(0.8, 0.1, 0.1),
    seed: int = 0,
) -> str:
    """Export (or reuse) the dataset in the Ultralytics layout under ``out_dir``; return the ``data.yaml`` path."""
    from PIL import Image

    from .imageio import load_xray

    out = Path(out_dir)
    records = {s: split_records(dataset_dir, split_file, s, fractions, seed) for s in SPLITS}
    parts = export_parts(dataset_dir, split_file, margin)
    stamp = out / "export.json"
    data_yaml = out / "data.yaml"
    same, reason = fingerprint.matches(out, parts) if out.is_dir() else (False, "no export yet")
    if same and stamp.is_file() and data_yaml.is_file():
        return str(data_yaml)
    logger.info("YOLO export %s: building: %s", out, reason or "incomplete export")
    stems = unique_stems([r["id"] for recs in records.values() for r in recs])
    if out.exists():
        shutil.rmtree(out)
    counts = {}
    for split, recs in records.items():
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for r in recs:
            img = load_xray(r["image"])
            stem = stems[r["id"]]
            Image.fromarray(np.round(img * 255).astype(np.uint8)).save(out / "images" / split / f"{stem}.png")
            xc, yc, bw, bh = yolo_label(target_box(r, img.shape, margin), img.shape)
            (out / "labels" / split / f"{stem}.txt").write_text(f"0 {xc:.6f} {yc:.6f} {bw:.6f} {bh:.6f}\n")
        counts[split] = len(recs)
    val = "images/val"
    if not counts["val"]:  # a dataset too small to have a validation split: Ultralytics needs one
        val = "images/train"
        logger.warning("no validation images: Ultralytics will validate on the training split (%s)", out)
    data_yaml.write_text(
        f"# Nasal bone boxes (landmark box, margin {margin}) exported from {Path(dataset_dir).resolve()}\n"
        f"path: {out.resolve()}\ntrain: images/train\nval: {val}\ntest: images/test\n"
        f"names:\n  0: {CLASS_NAME}\n"
    )
    stamp.write_text(json.dumps({"margin": margin, "images": counts, "val": val}, indent=2))
    fingerprint.record(out, parts, {"dataset_dir": str(Path(dataset_dir).resolve()), "split_file": str(split_file)})
    logger.info("exported %s images to %s", counts, out)
    return str(data_yaml)
