"""Stage 1: the nasal bone detector at inference, and its checkpoint format.

- ``detector.pt`` is self-describing and loads with ``torch.load(weights_only=True)``: the Ultralytics
  model yaml (``nc=1``), the float32 state dict, the input size and the box margin it was trained
  with (``detector.json`` beside it repeats them for people). ``save_detector`` writes it.
- ``NasalBoneDetector`` letterboxes any ``(rows, cols)`` image to the square model input
  (``scripts.geometry.Letterbox``) and maps the best box back to the original pixels (``scripts.geometry``
  convention: pixel ``(r, c)`` is centred at ``(x=c, y=r)``).
- ``DetectNasalBoned`` is the MONAI dictionary transform for inference on full head X-rays.

Training is ``scripts.detector_training`` and evaluation ``scripts.detector_evaluation``; this module
imports neither, nor Ultralytics' training code, so that inference stays light.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from . import checkpoint
from .geometry import Letterbox, crop_box, squarify
from .yolo_export import CLASS_NAME, prepare_ultralytics

SAFE_ACTIVATION = re.compile(r"(torch\.)?nn\.[A-Za-z0-9]+\(\)")  # e.g. nn.SiLU(), the only activation spec allowed
CHECKPOINT_FORMAT = "ultralytics-detection-model/1"  # the "format" field of detector.pt and detector.json


def best_box(pred: torch.Tensor, end2end: bool = False) -> tuple[np.ndarray, float]:
    """The highest-scoring ``[x1, y1, x2, y2]`` (input coordinates) and score of one image's raw output.

    ``pred`` is ``(4 + nc, anchors)`` with centre-size boxes, or ``(max_det, 6)`` ``x1 y1 x2 y2 score class``
    for end-to-end heads. Taking the maximum is what NMS keeps first.
    """
    if end2end:
        i = int(pred[:, 4].argmax())
        return pred[i, :4].double().cpu().numpy(), float(pred[i, 4])
    scores = pred[4:].max(0).values
    i = int(scores.argmax())
    xc, yc, w, h = (float(v) for v in pred[:4, i])
    return np.array([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2]), float(scores[i])


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------


def _build_model(ckpt: dict, source: str | Path = "detector checkpoint"):
    """The Ultralytics ``DetectionModel`` of a ``detector.pt`` checkpoint dict, in eval mode.

    The model description comes from the file: Ultralytics would ``eval()`` its ``activation`` (and its own
    restricted mode is fixed when Ultralytics is first imported), so anything but a plain ``nn.<Name>()`` is refused.
    """
    act = ckpt["yaml"].get("activation")
    if act is not None and not (isinstance(act, str) and SAFE_ACTIVATION.fullmatch(act)):
        raise checkpoint.CheckpointError(f"{source}: refused model description (activation {str(act)[:60]!r})")
    prepare_ultralytics(None)
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(cfg=dict(ckpt["yaml"]), ch=int(ckpt.get("ch", 3)), nc=int(ckpt["nc"]), verbose=False)
    model.load_state_dict(ckpt["state_dict"])
    model.names = {i: n for i, n in enumerate(ckpt["names"])}
    return model.float().eval()


def set_confidence_floor(path: str | Path, floor: float, details: dict | None = None) -> Path:
    """Store the confidence floor (and how it was chosen) in ``detector.pt`` and ``detector.json``."""
    ckpt = checkpoint.safe_load(path)
    ckpt["confidence_floor"] = float(floor)
    out = checkpoint.atomic_save(ckpt, path)
    meta_path = out.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.update(confidence_floor=float(floor), confidence_floor_choice=details or {})
    meta_path.write_text(json.dumps(meta, indent=2))
    return out


def save_detector(
    ultralytics_weights: str | Path, out_path: str | Path, imgsz: int, margin: float, info: dict | None = None
) -> Path:
    """Convert an Ultralytics ``best.pt`` into the bundle's self-describing ``detector.pt`` (+ ``detector.json``)."""
    prepare_ultralytics(None)
    from ultralytics.nn.tasks import load_checkpoint

    model, _ = load_checkpoint(str(ultralytics_weights), device="cpu")
    model = model.float()
    names = [model.names[i] for i in sorted(model.names)] if isinstance(model.names, dict) else list(model.names)
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "yaml": json.loads(json.dumps(model.yaml)),
        "ch": int(model.yaml.get("channels", 3)),
        "nc": len(names),
        "names": names,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "imgsz": int(imgsz),
        "margin": float(margin),
    }
    out = checkpoint.atomic_save(ckpt, out_path)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "model": model.yaml.get("yaml_file", ""),
        "imgsz": int(imgsz),
        "margin": float(margin),
        "names": names,
        **(info or {}),
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return out


def _torch_device(device) -> torch.device:
    """``device`` as a ``torch.device``; ``None``: CUDA when present, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def ultralytics_device(device) -> str:
    """Ultralytics' device string (``"cpu"``, ``"0"``...) of a torch device or string."""
    dev = _torch_device(device)
    return "cpu" if dev.type == "cpu" else (str(dev.index or 0) if dev.type == "cuda" else dev.type)


class RawPredictions(torch.nn.Module):
    """The detection model's raw output alone (``(B, 4 + nc, anchors)``), without the training-time feature maps."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def detector_runtime(model: torch.nn.Module, runtime: str, imgsz: int, cache_dir=None) -> torch.nn.Module:
    """The fused detection model's raw predictions in eager torch or ONNX Runtime (``scripts.onnx_runtime``).

    The export is traced with the head's ``dynamic`` flag on (anchors computed from the input, as Ultralytics'
    own exporter does); the flag is put back afterwards.
    """
    from .onnx_runtime import for_runtime

    raw = RawPredictions(model).eval()
    head = model.model[-1]
    dynamic = getattr(head, "dynamic", False)
    head.dynamic = True
    try:
        return for_runtime(raw, runtime, (1, 3, imgsz, imgsz), dynamic_batch=False, cache_dir=cache_dir)
    finally:
        head.dynamic = dynamic


class NasalBoneDetector:
    """The trained detector: ``predict(image01)`` -> (best box in original pixels or ``None``, confidence).

    ``runtime``: ``"torch"`` (eager) or ``"onnxruntime"`` (the same network exported to ONNX, cached in
    ``cache_dir``); both give the same boxes within float tolerance (tests/test_onnx_runtime.py).
    """

    def __init__(
        self,
        weights: str | Path,
        imgsz: int | None = None,
        conf: float = 0.05,
        device=None,
        runtime: str = "torch",
        cache_dir: str | Path | None = None,
    ):
        ckpt = checkpoint.safe_load(weights)  # weights_only=True; a file it refuses gives a one-line error
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        if found != CHECKPOINT_FORMAT:
            raise checkpoint.CheckpointError(f"{weights}: not a detector checkpoint of this bundle (found {found!r})")
        self.device = _torch_device(device)
        # conv + batch norm folded for inference
        self.model = _build_model(ckpt, weights).fuse(verbose=False).to(self.device)
        self.imgsz = int(imgsz or ckpt["imgsz"])
        self.margin = float(ckpt["margin"])
        self.conf = float(conf)
        # below it a box is not trusted (chosen on validation, scripts.detector_training.choose_confidence_floor)
        self.confidence_floor = float(ckpt.get("confidence_floor", 0.0))
        self.end2end = bool(getattr(self.model.model[-1], "end2end", False))
        self.network = detector_runtime(self.model, runtime, self.imgsz, cache_dir)

    @torch.inference_mode()
    def predict(self, image01: np.ndarray) -> tuple[np.ndarray | None, float]:
        """The best nasal bone box ``[x1, y1, x2, y2]`` of a ``(rows, cols)`` image in [0, 1], and its score."""
        image01 = np.asarray(image01, dtype=np.float32)
        if image01.ndim == 3 and image01.shape[0] == 1:
            image01 = image01[0]
        if image01.ndim != 2:
            raise ValueError(f"expected a (rows, cols) image, got shape {image01.shape}")
        lb = Letterbox.fit(image01.shape, self.imgsz)
        x = torch.from_numpy(lb.apply(image01)).to(self.device, torch.float32).div_(255.0)
        pred = self.network(x.expand(1, 3, -1, -1).contiguous())
        box, score = best_box(pred[0], self.end2end)
        if score < self.conf:
            return None, 0.0
        return lb.to_original(box), score


class DetectNasalBoned(MapTransform):
    """Detect the nasal bone on a full head X-ray dict and add its crop.

    Adds ``box`` (the square box the crop was taken from, for ``scripts.geometry.paste_back``),
    ``detector_box`` (the detector's own box), ``detector_confidence``, ``image_shape`` and
    ``crop_key`` (``(1, crop_size, crop_size)`` float32). The image may be ``(rows, cols)`` or
    channel-first ``(1, rows, cols)``. If nothing is found, or only a box whose confidence is below the detector's
    floor chosen on validation, ``on_miss="full"`` crops the whole image (``box_source`` is ``"none"`` and
    ``not_assessable`` says why), ``on_miss="raise"`` raises.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        weights: str = "",
        crop_size: int = 256,
        imgsz: int | None = None,
        conf: float = 0.05,
        device=None,
        crop_key: str = "crop",
        on_miss: str = "full",
        allow_missing_keys: bool = False,
        runtime: str = "torch",
        cache_dir: str | Path | None = None,
    ):
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError("DetectNasalBoned works on one image key")
        if on_miss not in ("full", "raise"):
            raise ValueError(f"on_miss must be 'full' or 'raise', got {on_miss!r}")
        self.detector = NasalBoneDetector(weights, imgsz, conf, device, runtime, cache_dir)
        self.crop_size, self.crop_key, self.on_miss = int(crop_size), crop_key, on_miss

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            img = np.asarray(d[key].detach().cpu() if isinstance(d[key], torch.Tensor) else d[key], dtype=np.float32)
            img = img[0] if img.ndim == 3 else img
            box, conf = self.detector.predict(img)
            source, why = "detector", None
            floor = self.detector.confidence_floor
            if box is None:
                why = "no nasal bone found"
            elif conf < floor:
                why = f"nasal bone box confidence {conf:.2f} is below the floor {floor:.2f} chosen on validation"
            if why:
                if self.on_miss == "raise":
                    raise RuntimeError(why)
                box, source = np.array([-0.5, -0.5, img.shape[1] - 0.5, img.shape[0] - 0.5]), "none"
                d["not_assessable"] = why
            square = squarify(box)
            d.update(box=square, detector_box=box, detector_confidence=conf, box_source=source, image_shape=img.shape)
            d[self.crop_key] = torch.from_numpy(crop_box(img, square, self.crop_size))[None]
        return d


__all__ = [
    "CHECKPOINT_FORMAT",
    "CLASS_NAME",
    "DetectNasalBoned",
    "Letterbox",
    "NasalBoneDetector",
    "RawPredictions",
    "best_box",
    "detector_runtime",
    "save_detector",
    "set_confidence_floor",
    "ultralytics_device",
]
