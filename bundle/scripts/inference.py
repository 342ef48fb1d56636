"""End-to-end inference on full head X-rays: box, fracture probability, fracture-region map, overlay.

The bundle's ``configs/inference.yaml`` wires MONAI components (``LoadImaged`` with ``XrayReader``, the
detector as ``DetectNasalBoned``, a ``SupervisedEvaluator`` with ``FractureInferer`` and the writer of
``scripts.inference_writer``); this module holds the helpers the config calls and ``run_inference``,
the same workflow from Python. For each input image ``OUT/<stem>.json`` holds ``nasal_bone_box``,
``detector_confidence``, ``logit``, ``fracture_probability`` (calibrated), ``fracture``, ``threshold``, ``finding``,
``thresholds``, ``region_mask`` / ``heatmap`` / ``overlay`` (PNG paths relative to OUT), or ``error``;
``OUT/summary.csv`` lists every file. Input files are named by their path relative to the input folder in every
output, log and MLflow record.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from . import checkpoint
from .detector import CHECKPOINT_FORMAT as DETECTOR_FORMAT
from .evaluation import stored_calibration
from .imageio import INTENSITY_CONVENTION, SUFFIXES, _suffix, image_format, one_line

logger = logging.getLogger("nasal.inference")
WEIGHTS = {"detector": "detector.pt", "classifier": "classifier.pt", "gdc2": "gdc2.pt"}
WEIGHTS_FORMATS = {
    "detector": DETECTOR_FORMAT,
    "classifier": checkpoint.CLASSIFIER_FORMAT,
    "gdc2": checkpoint.GAN_FORMAT,
}
# The classifier architecture when no classifier.pt is there to say (configs/classifier.yaml's; 128 px crops).
DEFAULT_CLASSIFIER = {
    "model_name": "convnet",
    "in_channels_mode": "gray",
    "mean": 0.0,
    "std": 0.0625,
    "input_size": None,
    "highpass_sigma": 3.0,
}


def _is_input(path: Path) -> bool:
    """A file the loader recognises (DICOM by content whatever its name, other formats by suffix)."""
    try:
        return image_format(path) is not None
    except OSError:  # cannot be read to tell: listed, so that its error is reported instead of silently skipped
        return True


def list_inputs(input_path: str | Path) -> list[Path]:
    """A single file, or the image files of a folder (recursively; DICOM recognised by content, whatever the name)."""
    path = Path(input_path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input {path} is neither a file nor a folder")
    files = []
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if _is_input(f):
            files.append(f)
        else:
            logger.info("skipping %s: not an image file type", f.relative_to(path).as_posix())
    return files


def relative_name(path: Path, input_path: str | Path) -> str:
    """``path`` relative to the input folder (a single input file: its name): how outputs, logs and MLflow name it."""
    root = Path(input_path)
    return path.name if root.is_file() or not path.is_relative_to(root) else path.relative_to(root).as_posix()


def _stem(path: Path, used: set[str]) -> str:
    """A unique output name: the file name without its image suffix (a DICOM named by UID keeps its whole name)."""
    suffix = _suffix(path)
    stem = path.name[: -len(suffix)] if suffix in SUFFIXES and len(path.name) > len(suffix) else path.name
    while stem in used:
        stem = f"{stem}_{suffix.strip('.').replace('.', '_') or 'file'}"
    used.add(stem)
    return stem


def input_data(input_path: str | Path) -> list[dict[str, str]]:
    """The dataset's data dicts: ``image`` and ``path`` (the file), ``name`` (relative) and ``stem`` (output name)."""
    used: set[str] = set()
    return [
        {"image": str(p), "path": str(p), "name": relative_name(p, input_path), "stem": _stem(p, used)}
        for p in list_inputs(input_path)
    ]


class ModelFilesError(SystemExit):
    """Missing or unusable weights files, in one line. A ``SystemExit``: the command line prints the line (no
    traceback) and exits with status 1, even from inside MONAI's config parser; Python callers catch it by name."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _check_weights_file(path: Path, fmt: str) -> None:
    """Raise ``CheckpointError`` unless ``path`` loads safely as a ``fmt`` weights file (checked, not built)."""
    if fmt != DETECTOR_FORMAT:
        checkpoint.read(path, fmt)
        return
    ckpt = checkpoint.safe_load(path)
    found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
    if found != fmt:
        raise checkpoint.CheckpointError(f"{path}: not a detector checkpoint of this bundle (found {found!r})")


def _weights_problem(path: Path, fmt: str) -> str | None:
    """What is wrong with the weights file ``path`` (one line naming it), or None."""
    if not path.is_file():
        return f"{path} is missing"
    try:
        _check_weights_file(path, fmt)
    except checkpoint.CheckpointError as err:
        return str(err)
    except Exception as err:  # an unreadable file, or a damaged one (a truncated file gives an OSError)
        return f"{path}: not a readable weights file ({type(err).__name__}: {err})"
    return None


def require_weights(models_dir: str | Path) -> dict[str, str]:
    """Paths of the trained ``detector``, ``classifier`` and ``gdc2`` weights, each present and loading safely.

    Otherwise ``ModelFilesError``: one line naming every file that is missing or damaged, and what to do.
    """
    models = Path(models_dir)
    paths = {k: models / n for k, n in WEIGHTS.items()}
    problems = [p for k, path in paths.items() if (p := _weights_problem(path, WEIGHTS_FORMATS[k]))]
    if problems:
        missing = any(p.endswith(" is missing") for p in problems)
        todo = "train first (python -m monai.bundle run training --config_file bundle/configs/train.yaml)"
        message = f"cannot run inference: {'; '.join(problems)}; {todo if missing else 'retrain or copy it again'}"
        raise ModelFilesError(one_line(message, limit=2000))
    return {k: str(path) for k, path in paths.items()}


def classifier_info(path: str | Path, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """``config`` (FractureClassifier args), ``threshold``, ``temperature``, ``thresholds`` (``suspicious`` and
    ``fracture``) and ``crop_size`` stored in ``classifier.pt``; every threshold is on the calibrated probability
    ``sigmoid(logit / temperature)``.

    Without the file: ``defaults`` (or ``DEFAULT_CLASSIFIER``), threshold 0.5 and 128 px crops, matching
    ``metadata.json``'s network_data_format, so MONAI's bundle tools can build the network before training. Weights
    written before the calibration step: temperature 1 and both operating points at ``threshold``, with a warning.
    """
    if not Path(path).is_file():
        return {
            "config": dict(defaults or DEFAULT_CLASSIFIER),
            "threshold": 0.5,
            "temperature": 1.0,
            "thresholds": {"suspicious": 0.5, "fracture": 0.5},
            "crop_size": 128,
            "crop_intensity": {},
        }
    ckpt = checkpoint.read(path, checkpoint.CLASSIFIER_FORMAT)
    info = ckpt["info"]
    if info.get("intensity") != INTENSITY_CONVENTION:
        logger.warning(
            "%s was trained with images loaded another way (%s); this loader: %s. Its probabilities and threshold "
            "may not hold: retrain (python -m monai.bundle run training --config_file bundle/configs/train.yaml)",
            Path(path).name,
            info.get("intensity", "container bit-depth scaling, before the robust window"),
            INTENSITY_CONVENTION,
        )
    calibrated = stored_calibration(info)
    if not calibrated["calibrated"]:
        logger.warning(
            "%s has no calibration step or operating points (older weights): probabilities uncalibrated "
            "(temperature 1), suspicious = fracture = threshold %.4f; retrain for both",
            Path(path).name,
            float(info["threshold"]),
        )
    return {
        "config": dict(ckpt["networks"]["classifier"]["config"]),
        "threshold": float(info["threshold"]),
        "temperature": calibrated["temperature"],
        "thresholds": calibrated["thresholds"],
        "crop_size": int(info.get("crop_size", 128)),
        "crop_intensity": dict(info.get("crop_intensity") or {}),  # the validation crops' ranges (input_guard)
    }


def classifier_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """C's weights (``state_dict``) of a ``classifier.pt``."""
    return checkpoint.read(path, checkpoint.CLASSIFIER_FORMAT)["networks"]["classifier"]["state_dict"]


def with_weights(network: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """``network`` (built by ``network_def``) with the weights of ``classifier.pt`` loaded, in eval mode."""
    network.load_state_dict(classifier_state_dict(path))
    return network.eval()


def classifier_network(
    network_def: torch.nn.Module,
    path: str | Path,
    device: str | torch.device,
    runtime: str = "torch",
    crop_size: int = 128,
    cache_dir: str | Path | None = None,
) -> torch.nn.Module:
    """C with the weights of ``classifier.pt`` on ``device``, run by ``runtime`` (``scripts.onnx_runtime``)."""
    from .onnx_runtime import for_runtime

    network = with_weights(network_def, path).to(device)
    return for_runtime(network, runtime, (1, 1, crop_size, crop_size), cache_dir=cache_dir)


def region_network(
    path: str | Path,
    device: str | torch.device,
    runtime: str = "torch",
    crop_size: int = 128,
    cache_dir: str | Path | None = None,
) -> torch.nn.Module:
    """The G-D-C step-2 generator of ``gdc2.pt`` (with its ``region`` settings), run by ``runtime``."""
    from .masks import load_region_model
    from .onnx_runtime import for_runtime

    generator = load_region_model(path, device).eval()
    return for_runtime(generator, runtime, (1, 1, crop_size, crop_size), cache_dir=cache_dir)


def run_inference(
    input_path: str | Path,
    output_dir: str | Path,
    models_dir: str | Path,
    device: str | torch.device | None = None,
    dicom_out: bool = False,
    keep_patient_identity: bool = False,
    tracking_uri: str | None = None,
    experiment_name: str = "nasal_bone_fracture",
) -> Path:
    """Run ``configs/inference.yaml`` (as ``python -m monai.bundle run`` does); return ``summary.csv``'s path."""
    from monai.bundle import ConfigWorkflow

    from . import BUNDLE_ROOT

    overrides: dict[str, Any] = {
        "input_dir": str(input_path),
        "output_dir": str(output_dir),
        "models_dir": str(models_dir),
        "dicom_out": bool(dicom_out),
        "dicom_keep_patient_identity": bool(keep_patient_identity),
        "tracking_uri": tracking_uri,
        "experiment_name": experiment_name,
    }
    if device is not None:
        overrides["device"] = torch.device(device)
    workflow = ConfigWorkflow(
        config_file=str(BUNDLE_ROOT / "configs" / "inference.yaml"),
        meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return Path(output_dir) / "summary.csv"
