"""Stage 1: the nasal bone detector, an Ultralytics YOLO model trained on landmark boxes.

- ``DetectorTraining`` (``train#trainer`` of ``configs/detector.yaml``) exports the dataset
  (``scripts.yolo_export``), trains with Ultralytics offline, resumes an interrupted run from its
  ``last.pt``, logs per-epoch losses and mAP to MLflow itself and writes ``@models_dir/detector.pt``.
- ``detector.pt`` is self-describing and loads with ``torch.load(weights_only=True)``: the Ultralytics
  model yaml (``nc=1``), the float32 state dict, the input size and the box margin it was trained
  with (``detector.json`` beside it repeats them for people).
- ``NasalBoneDetector`` letterboxes any ``(rows, cols)`` image to the square model input (as Ultralytics
  does: longest side to ``imgsz``, centred, padded with grey 114) and maps the best box back to the
  original pixels (``scripts.boxes`` convention: pixel ``(r, c)`` is centred at ``(x=c, y=r)``).
- ``DetectNasalBoned`` is the MONAI dictionary transform for inference on full head X-rays.
- ``evaluate_detector`` (``configs/detector_evaluate.yaml``) measures a split.

Salt-and-pepper noise (the thesis's third augmentation, 5% of pixels) is not an Ultralytics
augmentation; it is added on the fly: the training dataset is a ``YOLODataset`` whose transform chain
gets a salt-and-pepper step (``RandSaltPepper``'s semantics: with probability ``salt_pepper#prob``, a
fresh random ``salt_pepper#amount`` of the pixels set to black or white every time an image is drawn)
just before Ultralytics' final formatting step.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .boxes import box_iou, squarify
from .crops import crop_box
from .dataset import landmarks
from .tracking import MlflowRun  # Ultralytics' own MLflow callback is off: it would write mlruns/ into the cwd
from .yolo_export import CLASS_NAME, prepare_ultralytics, target_box

logger = logging.getLogger(__name__)
PAD_VALUE = 114  # Ultralytics' letterbox grey
CHECKPOINT_FORMAT = "ultralytics-detection-model/1"


# ----------------------------------------------------------------------------------------------
# Coordinates: original image <-> square model input
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Letterbox:
    """How an image of ``shape`` was resized by ``(sx, sy)`` and padded by ``(left, top)`` to ``imgsz``.

    Model-input boxes are in Ultralytics' pixel-edge coordinates (input pixel ``c`` spans ``[c, c + 1]``);
    original boxes follow ``scripts.boxes`` (pixel ``c`` spans ``[c - 0.5, c + 0.5]``).
    """

    shape: tuple[int, int]
    imgsz: int
    sx: float
    sy: float
    left: int
    top: int

    @classmethod
    def fit(cls, shape, imgsz: int) -> Letterbox:
        """The letterbox of an image of ``shape`` (rows, cols) into ``imgsz x imgsz``."""
        h, w = int(shape[0]), int(shape[1])
        r = imgsz / max(h, w)
        nw, nh = max(1, round(w * r)), max(1, round(h * r))
        return cls((h, w), int(imgsz), nw / w, nh / h, (imgsz - nw) // 2, (imgsz - nh) // 2)

    @property
    def resized(self) -> tuple[int, int]:
        """``(rows, cols)`` of the resized image inside the square."""
        return round(self.shape[0] * self.sy), round(self.shape[1] * self.sx)

    def to_input(self, box) -> np.ndarray:
        """Original ``[x1, y1, x2, y2]`` -> model-input coordinates."""
        b = np.asarray(box, dtype=np.float64) + 0.5
        return b * [self.sx, self.sy, self.sx, self.sy] + [self.left, self.top, self.left, self.top]

    def to_original(self, box) -> np.ndarray:
        """Model-input ``[x1, y1, x2, y2]`` -> original pixel coordinates."""
        b = np.asarray(box, dtype=np.float64) - [self.left, self.top, self.left, self.top]
        return b / [self.sx, self.sy, self.sx, self.sy] - 0.5

    def apply(self, image01: np.ndarray) -> np.ndarray:
        """The ``(imgsz, imgsz)`` uint8 model input of a ``(rows, cols)`` image in [0, 1]."""
        import cv2

        img = np.round(np.clip(image01, 0.0, 1.0) * 255).astype(np.uint8)
        nh, nw = self.resized
        if (nh, nw) != img.shape:
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        out = np.full((self.imgsz, self.imgsz), PAD_VALUE, dtype=np.uint8)
        out[self.top : self.top + nh, self.left : self.left + nw] = img
        return out


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


def _build_model(ckpt: dict):
    prepare_ultralytics(None)
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(cfg=dict(ckpt["yaml"]), ch=int(ckpt.get("ch", 3)), nc=int(ckpt["nc"]), verbose=False)
    model.load_state_dict(ckpt["state_dict"])
    model.names = {i: n for i, n in enumerate(ckpt["names"])}
    return model.float().eval()


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
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
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
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class NasalBoneDetector:
    """The trained detector: ``predict(image01)`` -> (best box in original pixels or ``None``, confidence)."""

    def __init__(self, weights: str | Path, imgsz: int | None = None, conf: float = 0.05, device=None):
        ckpt = torch.load(weights, map_location="cpu", weights_only=True)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{weights}: not a detector checkpoint of this bundle (format {ckpt.get('format')!r})")
        self.device = _torch_device(device)
        self.model = _build_model(ckpt).fuse(verbose=False).to(self.device)  # conv + batch norm folded for inference
        self.imgsz = int(imgsz or ckpt["imgsz"])
        self.margin = float(ckpt["margin"])
        self.conf = float(conf)
        self.end2end = bool(getattr(self.model.model[-1], "end2end", False))

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
        out = self.model(x.expand(1, 3, -1, -1).contiguous())
        pred = out[0] if isinstance(out, (tuple, list)) else out
        box, score = best_box(pred[0], self.end2end)
        if score < self.conf:
            return None, 0.0
        return lb.to_original(box), score


class DetectNasalBoned(MapTransform):
    """Detect the nasal bone on a full head X-ray dict and add its crop.

    Adds ``box`` (the square box the crop was taken from, for ``scripts.crops.paste_back``),
    ``detector_box`` (the detector's own box), ``detector_confidence``, ``image_shape`` and
    ``crop_key`` (``(1, crop_size, crop_size)`` float32). The image may be ``(rows, cols)`` or
    channel-first ``(1, rows, cols)``. If nothing is found, ``on_miss="full"`` crops the whole image
    (``box_source`` says so), ``on_miss="raise"`` raises.
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
    ):
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError("DetectNasalBoned works on one image key")
        if on_miss not in ("full", "raise"):
            raise ValueError(f"on_miss must be 'full' or 'raise', got {on_miss!r}")
        self.detector = NasalBoneDetector(weights, imgsz=imgsz, conf=conf, device=device)
        self.crop_size, self.crop_key, self.on_miss = int(crop_size), crop_key, on_miss

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            img = np.asarray(d[key].detach().cpu() if isinstance(d[key], torch.Tensor) else d[key], dtype=np.float32)
            img = img[0] if img.ndim == 3 else img
            box, conf = self.detector.predict(img)
            source = "detector"
            if box is None:
                if self.on_miss == "raise":
                    raise RuntimeError("no nasal bone found")
                box, source = np.array([-0.5, -0.5, img.shape[1] - 0.5, img.shape[0] - 0.5]), "none"
            square = squarify(box)
            d.update(box=square, detector_box=box, detector_confidence=conf, box_source=source, image_shape=img.shape)
            d[self.crop_key] = torch.from_numpy(crop_box(img, square, self.crop_size))[None]
        return d


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def ultralytics_device(device) -> str:
    """Ultralytics' device string (``"cpu"``, ``"0"``...) of a torch device or string."""
    dev = _torch_device(device)
    return "cpu" if dev.type == "cpu" else (str(dev.index or 0) if dev.type == "cuda" else dev.type)


def set_threads(threads: int | None) -> int:
    """Use ``threads`` (default: every core) in torch and in Ultralytics' CPU device selection."""
    n = int(threads or os.cpu_count() or 1)
    import ultralytics.utils.torch_utils as tu

    tu.NUM_THREADS = n
    torch.set_num_threads(n)
    return n


class YoloSaltPepper:
    """Ultralytics-style transform (``labels["img"]`` is ``(rows, cols, 3)`` uint8): with probability ``prob``,
    ``amount`` of the pixels become black or white (half each), the same pixels in every channel.

    ``scripts.transforms.RandSaltPepper`` semantics, drawing ``amount * pixels`` positions instead of one
    random number per pixel: it runs on every drawn training image, where its cost matters on a CPU.
    """

    def __init__(self, prob: float = 0.5, amount: float = 0.05, seed: int | None = None):
        if not 0.0 <= amount <= 1.0:
            raise ValueError(f"amount must be in [0, 1], got {amount}")
        self.prob, self.amount, self.rng = float(prob), float(amount), np.random.default_rng(seed)

    def __call__(self, labels: dict) -> dict:
        if self.rng.random() >= self.prob:
            return labels
        img = labels["img"] = np.ascontiguousarray(labels["img"])
        flat = img.reshape(-1, img.shape[-1]) if img.ndim == 3 else img.reshape(-1, 1)  # a view: edits img
        idx = self.rng.choice(flat.shape[0], size=round(self.amount * flat.shape[0]), replace=False, shuffle=False)
        half = len(idx) // 2
        flat[idx[:half]] = 0
        flat[idx[half:]] = 255
        return labels


def _trainer_class(prob: float, amount: float, seed: int):
    """A ``DetectionTrainer`` whose training dataset adds salt-and-pepper noise (``YoloSaltPepper``)."""
    from copy import copy

    from ultralytics.data.dataset import YOLODataset
    from ultralytics.models.yolo.detect import DetectionTrainer

    class SaltPepperDataset(YOLODataset):
        def build_transforms(self, hyp=None):
            transforms = super().build_transforms(hyp)
            if self.augment and prob > 0 and amount > 0:
                transforms.insert(len(transforms.transforms) - 1, YoloSaltPepper(prob, amount, seed))  # before Format
            return transforms

    class NasalBoneTrainer(DetectionTrainer):
        def build_dataset(self, img_path, mode="train", batch=None):
            dataset = super().build_dataset(img_path, mode, batch)
            if mode == "train" and type(dataset) is YOLODataset:
                dataset.__class__ = SaltPepperDataset
                dataset.transforms = dataset.build_transforms(copy(self.args))
            return dataset

    return NasalBoneTrainer


def _results(run_dir: Path) -> list[dict]:
    path = run_dir / "results.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]
    by_epoch = {row["epoch"]: row for row in rows}  # a resumed run may repeat the interrupted epoch
    return list(by_epoch.values())


class DetectorTraining:
    """Train (or resume) the nasal bone detector; ``run()`` returns a summary dict.

    A run directory holds Ultralytics' files and ``detector_run.json`` (the settings' fingerprint and
    whether training finished). An unfinished run with the same settings and a ``last.pt`` resumes;
    anything else (a finished run, changed settings or data) trains from scratch.
    """

    def __init__(
        self,
        data_yaml: str,
        run_dir: str,
        weights_out: str,
        model: str,
        imgsz: int,
        epochs: int,
        batch: int,
        optimizer: str,
        lr0: float,
        margin: float,
        train_args: dict | None = None,
        augment: dict | None = None,
        salt_pepper: dict | None = None,
        device=None,
        seed: int = 0,
        threads: int | None = None,
        tracking_uri: str | None = None,
        experiment_name: str = "nasal_bone_fracture",
        run_name: str = "detector",
        artifact_location: str | None = None,
    ):
        self.data_yaml, self.run_dir, self.weights_out = data_yaml, Path(run_dir), Path(weights_out)
        self.model, self.margin, self.threads = model, float(margin), threads
        self.salt_pepper = {"prob": 0.0, "amount": 0.05, **(salt_pepper or {})}
        self.args = {
            **(train_args or {}),
            **(augment or {}),
            "imgsz": int(imgsz),
            "epochs": int(epochs),
            "batch": int(batch),
            "optimizer": optimizer,
            "lr0": float(lr0),
            "seed": int(seed),
            "amp": False,
            "pretrained": False,
            "close_mosaic": 0,
            "exist_ok": True,
            "project": str(self.run_dir.parent.resolve()),
            "name": self.run_dir.name,
        }
        self.device = ultralytics_device(device)
        self.mlflow = (tracking_uri, experiment_name, run_name, artifact_location)

    def fingerprint(self) -> str:
        keep = {k: v for k, v in self.args.items() if k not in ("workers", "cache", "plots", "project", "name")}
        text = json.dumps(
            {
                "model": self.model,
                "args": keep,
                "salt_pepper": self.salt_pepper,
                "margin": self.margin,
                "data": Path(self.data_yaml).parent.joinpath("export.json").read_text(),
            },
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def run(self) -> dict:
        prepare_ultralytics(self.run_dir.parent / "ultralytics")
        from ultralytics import YOLO

        n = set_threads(self.threads)
        state_file = self.run_dir / "detector_run.json"
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        key = self.fingerprint()
        last, best = self.run_dir / "weights" / "last.pt", self.run_dir / "weights" / "best.pt"
        same = state.get("fingerprint") == key
        mlf = MlflowRun(*self.mlflow)
        mlf.log_params(
            {
                "model": self.model,
                "margin": self.margin,
                "threads": n,
                **{f"salt_pepper_{k}": v for k, v in self.salt_pepper.items()},
                **{k: v for k, v in self.args.items() if k not in ("project", "name", "exist_ok")},
            }
        )
        t0 = time.perf_counter()
        try:
            trainer = _trainer_class(self.salt_pepper["prob"], self.salt_pepper["amount"], self.args["seed"])
            resume = same and not state.get("complete") and last.is_file()
            if not resume and self.run_dir.exists():
                shutil.rmtree(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            state_file.write_text(json.dumps({"fingerprint": key, "complete": False}))
            yolo = YOLO(str(last) if resume else self.model, task="detect")
            yolo.add_callback(
                "on_fit_epoch_end",
                lambda tr: mlf.log_metrics(
                    {**tr.label_loss_items(tr.tloss, prefix="train"), **tr.metrics, **tr.lr}, step=tr.epoch + 1
                ),
            )
            if resume:
                logger.info("detector: resuming the interrupted run from %s", last)
                yolo.train(
                    resume=True,
                    trainer=trainer,
                    data=self.data_yaml,
                    device=self.device,
                    workers=self.args.get("workers", 0),
                    cache=self.args.get("cache", False),
                )
            else:
                yolo.train(trainer=trainer, data=self.data_yaml, device=self.device, **self.args)
        except BaseException:
            mlf.close("FAILED")
            raise
        seconds = time.perf_counter() - t0
        rows = _results(self.run_dir)
        final = rows[-1] if rows else {}
        summary = {
            "mode": "resumed" if resume else "trained",
            "train_seconds": round(seconds, 1),
            "epochs_done": len(rows),
            "mAP50_val": float(final.get("metrics/mAP50(B)", "nan")),
            "mAP50_95_val": float(final.get("metrics/mAP50-95(B)", "nan")),
        }
        state_file.write_text(json.dumps({"fingerprint": key, "complete": True, **summary}))
        save_detector(
            best if best.is_file() else last,
            self.weights_out,
            self.args["imgsz"],
            self.margin,
            {"run_dir": str(self.run_dir), **summary},
        )
        mlf.log_metrics({"train_seconds": seconds})
        mlf.close()
        logger.info("detector: %s in %.0f s, weights %s", summary["mode"], seconds, self.weights_out)
        return summary


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def ultralytics_map(
    model, data_yaml: str, split: str, imgsz: int, out_dir: str | Path, device=None, batch: int = 16
) -> dict:
    """mAP50 and mAP50-95 of an in-memory detection model on an exported split (Ultralytics' validator)."""
    prepare_ultralytics(Path(out_dir) / "ultralytics")
    import copy

    from ultralytics.models.yolo.detect import DetectionValidator

    args = {
        "data": data_yaml,
        "split": split,
        "imgsz": imgsz,
        "batch": batch,
        "conf": 0.001,
        "iou": 0.7,
        "plots": False,
        "save_json": False,
        "device": ultralytics_device(device),
        "verbose": False,
        "project": str(Path(out_dir).resolve()),
        "name": f"val_{split}",
        "exist_ok": True,
    }
    validator = DetectionValidator(args=args)
    stats = validator(model=copy.deepcopy(model))
    return {
        "mAP50": float(stats.get("metrics/mAP50(B)", float("nan"))),
        "mAP50_95": float(stats.get("metrics/mAP50-95(B)", float("nan"))),
    }


def _draw_tile(image01: np.ndarray, pred, gt, points, tile: int, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    h, w = image01.shape
    f = tile / max(h, w)
    img = (
        Image.fromarray(np.round(np.clip(image01, 0, 1) * 255).astype(np.uint8))
        .resize((round(w * f), round(h * f)), Image.BILINEAR)
        .convert("RGB")
    )
    canvas = Image.new("RGB", (tile, tile))
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)

    def scaled(b):
        return [(float(b[0]) + 0.5) * f, (float(b[1]) + 0.5) * f, (float(b[2]) + 0.5) * f, (float(b[3]) + 0.5) * f]

    draw.rectangle(scaled(gt), outline=(40, 220, 40), width=2)
    if pred is not None:
        draw.rectangle(scaled(pred), outline=(255, 60, 60), width=2)
    for (x, y), color in zip(points, ((0, 255, 255), (255, 255, 0)), strict=True):
        cx, cy = (x + 0.5) * f, (y + 0.5) * f
        draw.line([cx - 4, cy, cx + 4, cy], fill=color)
        draw.line([cx, cy - 4, cx, cy + 4], fill=color)
    draw.text((4, 4), text, fill=(255, 255, 255))
    return np.asarray(canvas)


def save_prediction_grid(
    items: list[dict], path: str | Path, cols: int = 4, tile: int = 320, zoom: bool = True
) -> Path:
    """A grid of tiles: predicted box (red), landmark box (green), nasion (cyan) and tip (yellow).

    With ``zoom`` each tile shows the region around the landmark box (3x its size) so that the boxes are readable.
    """
    from PIL import Image

    tiles = []
    for it in items[: cols * cols]:
        img, pred, gt, pts = it["image"], it["pred"], it["gt"], it["points"]
        if zoom:
            cx, cy, half = (gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2, 1.5 * max(gt[2] - gt[0], gt[3] - gt[1])
            view = np.array([cx - half, cy - half, cx + half, cy + half])
            size = 256
            img = crop_box(img, view, size)
            f = size / (view[2] - view[0])

            def move(b, origin=np.r_[view[:2], view[:2]], f=f):
                return None if b is None else (np.asarray(b, float) - origin[: np.shape(b)[-1]]) * f - 0.5 * (1 - f)

            pred, gt, pts = move(pred), move(gt), move(pts)
        tiles.append(_draw_tile(img, pred, gt, pts, tile, it["text"]))
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[r : r + cols], axis=1) for r in range(0, len(tiles), cols)], axis=0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return Path(path)


def evaluate_detector(
    dataset_dir: str,
    split_file: str,
    data_yaml: str,
    weights: str,
    out_dir: str,
    margin: float,
    split: str = "test",
    conf: float = 0.05,
    device=None,
    batch: int = 16,
    n_show: int = 16,
    fractions=(0.8, 0.1, 0.1),
    seed: int = 0,
    tracking_uri: str | None = None,
    experiment_name: str = "nasal_bone_fracture",
    run_name: str = "detector",
    artifact_location: str | None = None,
) -> dict:
    """Measure the detector on ``split``: mAP50 (Ultralytics val), IoU with the landmark box, landmark containment.

    Writes ``evaluation.json`` and ``predictions_<split>.png`` under ``out_dir``. An image without a box
    counts as a failure, with IoU 0 and landmarks not contained.
    """
    from .boxes import contains
    from .imageio import load_xray
    from .splits import split_records

    out = Path(out_dir)
    prepare_ultralytics(out / "ultralytics")
    records = split_records(dataset_dir, split_file, split, fractions, seed)
    det = NasalBoneDetector(weights, conf=conf, device=device)
    det.predict(np.random.default_rng(0).random((64, 64), dtype=np.float32))  # warm-up, not timed
    if abs(det.margin - margin) > 1e-9:
        logger.warning("detector trained with margin %s, evaluated against margin %s", det.margin, margin)
    ious, inside, confs, shown, seconds = [], [], [], [], 0.0
    per_image = []
    for r in records:
        img = load_xray(r["image"])
        t0 = time.perf_counter()
        box, c = det.predict(img)
        seconds += time.perf_counter() - t0
        gt, pts = target_box(r, img.shape, margin), landmarks(r)
        iou = 0.0 if box is None else box_iou(box, gt)
        ok = box is not None and contains(box, pts)
        ious.append(iou)
        inside.append(ok)
        confs.append(c)
        per_image.append(
            {
                "image": r["id"],
                "iou": round(iou, 4),
                "contains_both": int(ok),
                "confidence": round(c, 4),
                **dict(zip(("x1", "y1", "x2", "y2"), [""] * 4 if box is None else np.round(box, 2), strict=True)),
            }
        )
        if len(shown) < n_show:
            shown.append(
                {
                    "image": img,
                    "pred": box,
                    "gt": gt,
                    "points": pts,
                    "text": f"IoU {iou:.2f} conf {c:.2f}" + ("" if ok else " MISS"),
                }
            )
    out.mkdir(parents=True, exist_ok=True)
    maps = ultralytics_map(det.model, data_yaml, split, det.imgsz, out, device, batch)
    ious_a = np.asarray(ious)
    result = {
        "split": split,
        "images": len(records),
        **maps,
        "mean_iou": float(ious_a.mean()),
        "median_iou": float(np.median(ious_a)),
        "iou_at_least_0.5": float((ious_a >= 0.5).mean()),
        "iou_at_least_0.75": float((ious_a >= 0.75).mean()),
        "contains_both_landmarks": float(np.mean(inside)),
        "failures": int(sum(c == 0.0 for c in confs)),
        "conf_threshold": conf,
        "mean_confidence": float(np.mean(confs)),
        "ms_per_image": 1000.0 * seconds / max(len(records), 1),
        "imgsz": det.imgsz,
        "margin": margin,
        "weights": str(weights),
    }
    (out / "evaluation.json").write_text(json.dumps(result, indent=2))
    with open(out / f"evaluation_per_image_{split}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(per_image[0]) if per_image else ["image"])
        writer.writeheader()
        writer.writerows(per_image)
    save_prediction_grid(shown, out / f"predictions_{split}.png")
    mlf = MlflowRun(tracking_uri, experiment_name, run_name, artifact_location)
    mlf.log_metrics({f"{split}_{k}": v for k, v in result.items() if isinstance(v, (int, float)) and k != "images"})
    mlf.close()
    logger.info(
        "detector on %s: %s",
        split,
        {k: result[k] for k in ("mAP50", "mean_iou", "contains_both_landmarks", "failures")},
    )
    return result


class DetectorEvaluation:
    """``validate#evaluator`` of ``detector_evaluate.yaml``: ``run()`` is ``evaluate_detector(**kwargs)``."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def run(self) -> dict:
        return evaluate_detector(**self.kwargs)


__all__ = [
    "CLASS_NAME",
    "DetectNasalBoned",
    "DetectorEvaluation",
    "DetectorTraining",
    "Letterbox",
    "NasalBoneDetector",
    "evaluate_detector",
    "save_detector",
]
