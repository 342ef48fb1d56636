"""Stage 1 training: ``DetectorTrainer``, an Ignite engine that trains the Ultralytics detector.

``train#trainer`` of ``configs/detector.yaml``. ``run()`` trains (or resumes) with Ultralytics fully
offline in the run directory and writes ``@models_dir/detector.pt`` (+ ``detector.json``), as
``scripts.detector.save_detector`` describes. It fires Ignite's events so that handlers attached to it
(``train_handlers``, e.g. MONAI's ``StatsHandler``, or the ``MLFlowHandler`` that
``monai.bundle run --tracking mlflow`` adds to ``train#handlers``) see it as a MONAI trainer: ``STARTED``;
per Ultralytics epoch ``ITERATION_COMPLETED`` and ``EPOCH_COMPLETED`` with ``state.epoch``,
``state.iteration`` (the batches done), ``state.output`` (``[{"loss": total train loss}]``) and
``state.metrics`` (``epoch_metrics``); then ``COMPLETED``.

Salt-and-pepper noise (the thesis's third augmentation, 5% of pixels) is not an Ultralytics
augmentation; it is added on the fly: the training dataset is a ``YOLODataset`` whose transform chain
gets a per-image step (``YoloDeviceAugment``: with probability ``salt_pepper#prob``, a fresh random
``salt_pepper#amount`` of the pixels set to black or white every time an image is drawn) just before
Ultralytics' final formatting step. The same step holds the device differences Ultralytics has no argument for
(gamma, an S-shaped tone curve, unsharp masking, inversion), each with its own probability in ``salt_pepper``
(0 by default: off).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import shutil
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from . import fingerprint
from .checkpoint import atomic_replace
from .detector import _torch_device, save_detector, set_confidence_floor, ultralytics_device
from .training import usable_cores
from .transforms import tone_curve, unsharp_mask
from .yolo_export import box_from_yolo_label, prepare_ultralytics

logger = logging.getLogger(__name__)


def set_threads(threads: int | None) -> int:
    """Use ``threads`` in torch and in Ultralytics' CPU device selection; by default every core this process may
    run on (``training.usable_cores``), not shared out between torchrun's processes: rank 0 trains the detector alone,
    in a child process, while the others wait."""
    n = int(threads or usable_cores())
    import ultralytics.utils.torch_utils as tu

    tu.NUM_THREADS = n
    torch.set_num_threads(n)
    return n


# the device effects of ``YoloDeviceAugment`` in the order they are applied: each has ``<effect>_prob`` and these keys
DEVICE_EFFECTS: dict[str, tuple[str, ...]] = {
    "gamma": ("gamma",),
    "tone": ("tone", "tone_mid"),
    "sharpen": ("sharpen_amount", "sharpen_sigma"),
    "invert": (),
}


class YoloDeviceAugment:
    """Ultralytics-style transform (``labels["img"]`` is ``(rows, cols, 3)`` uint8) of how X-ray devices differ,
    each effect with its own probability, in this order:

    - ``gamma``: ``x ** g`` on [0, 1], ``g`` uniform in ``gamma``;
    - ``tone``: ``scripts.transforms.tone_curve``, its contrast uniform in ``tone``, its midpoint in ``tone_mid``;
    - ``sharpen``: ``scripts.transforms.unsharp_mask``, amount in ``sharpen_amount``, Gaussian sigma in
      ``sharpen_sigma`` (pixels of the model input);
    - ``invert``: ``1 - x`` (bone dark: an export that ignored MONOCHROME1);
    - salt-and-pepper (``prob``, ``amount``): ``amount`` of the pixels become black or white (half each), the same
      pixels in every channel: ``scripts.transforms.RandSaltPepper`` semantics, drawing ``amount * pixels``
      positions instead of one random number per pixel (it runs on every drawn training image, where its cost
      matters on a CPU).

    An effect of probability 0 draws no random number: salt-and-pepper alone draws as it always did. The boxes are
    untouched (every effect is intensity only).
    """

    def __init__(
        self,
        prob: float = 0.5,
        amount: float = 0.05,
        seed: int | None = None,
        *,
        gamma_prob: float = 0.0,
        gamma: Sequence[float] = (0.7, 1.5),
        tone_prob: float = 0.0,
        tone: Sequence[float] = (1.0, 6.0),
        tone_mid: Sequence[float] = (0.4, 0.6),
        sharpen_prob: float = 0.0,
        sharpen_amount: Sequence[float] = (0.3, 1.5),
        sharpen_sigma: Sequence[float] = (1.0, 3.0),
        invert_prob: float = 0.0,
    ):
        if not 0.0 <= amount <= 1.0:
            raise ValueError(f"amount must be in [0, 1], got {amount}")
        self.prob, self.amount, self.rng = float(prob), float(amount), np.random.default_rng(seed)
        self.probs = {"gamma": gamma_prob, "tone": tone_prob, "sharpen": sharpen_prob, "invert": invert_prob}
        self.gamma, self.tone, self.tone_mid = tuple(gamma), tuple(tone), tuple(tone_mid)
        self.sharpen_amount, self.sharpen_sigma = tuple(sharpen_amount), tuple(sharpen_sigma)

    @staticmethod
    def active(settings: dict) -> dict:
        """``settings`` less the device effects of probability 0 (and their keys): what changes the training."""
        off = [e for e in DEVICE_EFFECTS if not settings.get(f"{e}_prob")]
        drop = {f"{e}_prob" for e in off} | {k for e in off for k in DEVICE_EFFECTS[e]}
        return {k: v for k, v in settings.items() if k not in drop}

    @staticmethod
    def enabled(settings: dict) -> bool:
        """Whether ``settings`` change any image: salt-and-pepper or a device effect on."""
        on = settings.get("prob", 0) > 0 and settings.get("amount", 0) > 0
        return on or any(settings.get(f"{e}_prob", 0) > 0 for e in DEVICE_EFFECTS)

    def _hit(self, effect: str) -> bool:
        p = float(self.probs[effect])
        return p > 0 and self.rng.random() < p

    def __call__(self, labels: dict) -> dict:
        lut = None  # gamma and tone as one lookup table of the 256 grey levels
        if self._hit("gamma"):
            lut = np.linspace(0.0, 1.0, 256) ** self.rng.uniform(*self.gamma)
        if self._hit("tone"):
            grey = torch.from_numpy(np.linspace(0.0, 1.0, 256) if lut is None else lut)
            lut = tone_curve(grey, self.rng.uniform(*self.tone), self.rng.uniform(*self.tone_mid)).numpy()
        if lut is not None:
            labels["img"] = np.round(np.clip(lut, 0, 1) * 255).astype(np.uint8)[labels["img"]]
        if self._hit("sharpen"):
            x = torch.from_numpy(np.moveaxis(labels["img"], -1, 0).astype(np.float32) / 255)
            x = unsharp_mask(x, self.rng.uniform(*self.sharpen_amount), self.rng.uniform(*self.sharpen_sigma))
            labels["img"] = np.moveaxis(np.round(x.clamp(0, 1).numpy() * 255).astype(np.uint8), 0, -1)
        if self._hit("invert"):
            labels["img"] = 255 - labels["img"]
        if self.rng.random() >= self.prob:
            return labels
        img = labels["img"] = np.ascontiguousarray(labels["img"])
        flat = img.reshape(-1, img.shape[-1]) if img.ndim == 3 else img.reshape(-1, 1)  # a view: edits img
        idx = self.rng.choice(flat.shape[0], size=round(self.amount * flat.shape[0]), replace=False, shuffle=False)
        half = len(idx) // 2
        flat[idx[:half]] = 0
        flat[idx[half:]] = 255
        return labels


YoloSaltPepper = YoloDeviceAugment  # its former name: salt-and-pepper alone


FLOOR_PERCENTILE = 1.0  # the floor keeps this percentile of the correct validation boxes' confidences


def choose_confidence_floor(weights: str | Path, data_yaml: str | Path, device=None) -> tuple[float, dict]:
    """The confidence below which a detected box is not trusted, chosen on the YOLO export's validation images.

    The detector runs on every validation image; a box is correct when its IoU with the labelled box is >= 0.5.
    The floor is the ``FLOOR_PERCENTILE``th percentile of the correct boxes' confidences: 99% of the nasal bones
    it found correctly on validation are at or above it. Returns the floor and how it was chosen.
    """
    from .detector import NasalBoneDetector
    from .geometry import box_iou
    from .imageio import load_xray

    root = Path(data_yaml).parent
    images = sorted((root / "images" / "val").glob("*.png"))
    detector = NasalBoneDetector(weights, conf=0.0, device=device)
    correct: list[float] = []
    for path in images:
        img = load_xray(path, intensity="stored")  # the export's PNGs are windowed already: as YOLO trained on them
        label = (root / "labels" / "val" / f"{path.stem}.txt").read_text().split()[1:5]
        truth = box_from_yolo_label(label, img.shape)
        box, conf = detector.predict(img)
        if box is not None and box_iou(box, truth) >= 0.5:
            correct.append(conf)
    floor = float(np.percentile(correct, FLOOR_PERCENTILE)) if correct else 0.0
    details = {
        "rule": f"percentile {FLOOR_PERCENTILE:g} of the confidences of correct validation boxes (IoU >= 0.5)",
        "validation_images": len(images),
        "correct_boxes": len(correct),
    }
    return floor, details


def _loads(path: Path) -> bool:
    """Whether Ultralytics' checkpoint ``path`` exists and is whole (a torch zip whose entries pass their CRC)."""
    if not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        damaged = str(err)
    if damaged:
        logger.warning("detector: %s is damaged (%s): training from scratch instead of resuming", path, damaged)
    return not damaged


def _device_dataset_class(settings: dict, seed: int):
    """A ``YOLODataset`` whose training transforms end with ``YoloDeviceAugment(**settings)`` (before Format)."""
    from ultralytics.data.dataset import YOLODataset

    class DeviceAugmentDataset(YOLODataset):
        def build_transforms(self, hyp=None):
            transforms = super().build_transforms(hyp)
            if self.augment and YoloDeviceAugment.enabled(settings):
                transforms.insert(len(transforms.transforms) - 1, YoloDeviceAugment(**settings, seed=seed))
            return transforms

    return DeviceAugmentDataset


def _trainer_class(settings: dict, seed: int):
    """A ``DetectionTrainer`` whose training dataset adds the per-image augmentation ``YoloDeviceAugment``."""
    from copy import copy

    from ultralytics.data.dataset import YOLODataset
    from ultralytics.models.yolo.detect import DetectionTrainer

    dataset_class = _device_dataset_class(settings, seed)

    class NasalBoneTrainer(DetectionTrainer):
        def build_dataset(self, img_path, mode="train", batch=None):
            dataset = super().build_dataset(img_path, mode, batch)
            if mode == "train" and type(dataset) is YOLODataset:
                dataset.__class__ = dataset_class
                dataset.transforms = dataset.build_transforms(copy(self.args))
            return dataset

        def save_model(self):
            # Ultralytics writes last.pt/best.pt in place: a kill mid-write leaves a truncated last.pt that every
            # rerun would resume from and fail on. Write beside them, then fsync and rename into place.
            final = {"last": self.last, "best": self.best}
            for key, path in final.items():
                setattr(self, key, path.with_name(f".{path.name}.tmp"))
            try:
                return super().save_model()
            finally:
                for key, path in final.items():
                    tmp = getattr(self, key)
                    setattr(self, key, path)
                    if tmp.is_file():
                        atomic_replace(tmp, path)

        def final_eval(self):
            # Ultralytics re-validates best.pt and reports it through "on_fit_epoch_end" at epoch + 1; flag it
            self.final_evaluating = True
            try:
                super().final_eval()
            finally:
                self.final_evaluating = False

    return NasalBoneTrainer


def _results(run_dir: Path) -> list[dict]:
    """The rows of Ultralytics' ``results.csv``, one per epoch."""
    path = run_dir / "results.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]
    by_epoch = {row["epoch"]: row for row in rows}  # a resumed run may repeat the interrupted epoch
    return list(by_epoch.values())


def metric_name(key: str) -> str:
    """An Ultralytics metric key as a plain MLflow name: ``metrics/mAP50-95(B)`` -> ``val_mAP50_95``,
    ``train/box_loss`` -> ``train_box_loss``, ``lr/pg0`` -> ``lr_pg0``."""
    key = re.sub(r"\(\w+\)$", "", key.strip())  # "(B)": box metrics
    return key.replace("metrics/", "val_").replace("/", "_").replace("-", "_")


def epoch_metrics(trainer) -> dict[str, float]:
    """One Ultralytics epoch's numbers: train box/cls/dfl losses, validation losses, precision, recall,
    mAP50, mAP50-95 and learning rates, under ``metric_name``s."""
    raw = {**trainer.label_loss_items(trainer.tloss, prefix="train"), **(trainer.metrics or {}), **trainer.lr}
    return {metric_name(k): float(v) for k, v in raw.items()}


def total_loss(tloss) -> float:
    """Sum of Ultralytics' running mean loss items (box + cls + dfl): a dict, or a tensor in older versions."""
    values = tloss.values() if isinstance(tloss, dict) else torch.as_tensor(tloss).flatten()
    return float(sum(float(v) for v in values))


def _train_batches(data_yaml: str, batch: int) -> int:
    """Batches per epoch of an exported split (``yolo_data/images/train``), before Ultralytics reports it."""
    n = sum(1 for _ in (Path(data_yaml).parent / "images" / "train").glob("*.png"))
    return max(1, math.ceil(n / max(1, batch)))


class DetectorTrainer(Engine):
    """Train (or resume) the nasal bone detector; ``run()`` returns a summary dict (also ``state.summary``).

    A run directory holds Ultralytics' files and ``detector_run.json`` (the settings' fingerprint and
    whether training finished). An unfinished run with the same settings and a ``last.pt`` resumes;
    anything else (a finished run, changed settings or data) trains from scratch. ``train_handlers`` are
    attached like MONAI's ``Trainer`` does; a handler calling ``terminate()`` stops Ultralytics after the epoch.
    With ``devices`` (``"0,1,2,3"``) Ultralytics trains in DDP workers of its own: the handlers then see each
    epoch (from ``results.csv``) when training ends, and cannot stop it early.
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
        train_handlers: Sequence | None = None,
        devices: str | None = None,
    ):
        super().__init__(self._no_step)
        self.data_yaml, self.run_dir, self.weights_out = data_yaml, Path(run_dir), Path(weights_out)
        self.model, self.margin, self.threads = model, float(margin), threads
        self.n_threads: int | None = None  # the threads actually used, set by run()
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
        # Ultralytics' device: "0,1,2,3" (``devices``) is its own multi-GPU training (DDP workers it launches)
        self.device = str(devices) if devices else ultralytics_device(device)
        self.torch_device = _torch_device(device)  # for the bundle's own detector (the confidence floor)
        self.train_handlers = list(train_handlers or [])
        for handler in self.train_handlers:
            handler.attach(self)
        self.add_event_handler(Events.STARTED, self._log_params)  # after the handlers' own STARTED (MLflow's run)

    @staticmethod
    def _no_step(engine: Engine, batch: Any) -> None:
        raise RuntimeError("DetectorTrainer runs Ultralytics' training loop; call run() without data")

    def params(self) -> dict[str, Any]:
        """The settings of this run, as logged to experiment trackers."""
        return {
            "model": self.model,
            "margin": self.margin,
            "threads": self.n_threads or self.threads,
            **{f"salt_pepper_{k}": v for k, v in self.salt_pepper.items()},
            **{k: v for k, v in self.args.items() if k not in ("project", "name", "exist_ok")},
        }

    def _log_params(self, engine: Engine) -> None:
        """Log ``params()`` into the MLflow run of every attached ``MLFlowHandler`` (it has a client and a run)."""
        for h in self.train_handlers:
            run = getattr(h, "cur_run", None)
            if run is None or not hasattr(h, "client"):
                continue
            from mlflow.entities import Param

            params = [Param(k, str(v)[:6000]) for k, v in self.params().items()]
            try:
                h.client.log_batch(run.info.run_id, params=params)
            except Exception as e:  # a resumed run whose params were logged with other values
                logger.warning("detector: parameters not logged to MLflow: %s", e)

    def fingerprint(self) -> str:
        """``scripts.fingerprint`` of everything that changes the trained weights: the settings and the exported
        data (the YOLO export's own fingerprint: split, dataset, margin)."""
        keep = {k: v for k, v in self.args.items() if k not in ("workers", "cache", "plots", "project", "name")}
        export = fingerprint.read(Path(self.data_yaml).parent) or {}
        return fingerprint.digest(
            {
                "model": self.model,
                "args": keep,
                "salt_pepper": YoloDeviceAugment.active(self.salt_pepper),  # effects off: as before they existed
                "margin": self.margin,
                "data": export.get("fingerprint") or Path(self.data_yaml).parent.joinpath("export.json").read_text(),
            }
        )

    def _epoch_end(self, tr) -> None:
        """Ultralytics' ``on_fit_epoch_end``: one Ignite iteration and epoch with that epoch's numbers."""
        if getattr(tr, "final_evaluating", False):
            self.state.best_metrics = epoch_metrics(tr)  # best.pt re-validated after the last epoch
            return
        self.state.epoch = tr.epoch + 1
        self.state.epoch_length = len(tr.train_loader)
        self.state.iteration = self.state.epoch * self.state.epoch_length
        self.state.metrics = epoch_metrics(tr)
        # decollated like a MONAI trainer's output; "loss": box + cls + dfl, the mean over the epoch's batches
        self.state.output = [{"loss": total_loss(tr.tloss)}]
        self.fire_event(Events.ITERATION_COMPLETED)
        self.fire_event(Events.EPOCH_COMPLETED)
        if self.should_terminate:
            tr.stop = True

    def multi_device(self) -> bool:
        """Whether Ultralytics trains on several GPUs (its own DDP workers)."""
        return "," in self.device

    def _replay(self, rows: list[dict]) -> None:
        """Each epoch of ``results.csv`` as one Ignite iteration and epoch, after multi-GPU training."""
        for row in rows:
            metrics = {metric_name(k): float(v) for k, v in row.items() if k not in ("epoch", "time") and v}
            self.state.epoch = int(float(row["epoch"]))
            self.state.iteration = self.state.epoch * self.state.epoch_length
            self.state.metrics = metrics
            self.state.output = [{"loss": sum(v for k, v in metrics.items() if k.startswith("train_"))}]
            self.fire_event(Events.ITERATION_COMPLETED)
            self.fire_event(Events.EPOCH_COMPLETED)

    def run(self) -> dict:  # type: ignore[override]
        """Train or resume; write ``detector.pt``; return the summary."""
        prepare_ultralytics(self.run_dir.parent / "ultralytics")
        from ultralytics import YOLO

        self.n_threads = set_threads(self.threads)
        state_file = self.run_dir / "detector_run.json"
        saved = json.loads(state_file.read_text()) if state_file.is_file() else {}
        key = self.fingerprint()
        last, best = self.run_dir / "weights" / "last.pt", self.run_dir / "weights" / "best.pt"
        resume = saved.get("fingerprint") == key and not saved.get("complete") and _loads(last)
        self.should_terminate = False
        self.state.max_epochs = self.args["epochs"]
        self.state.epoch_length = _train_batches(self.data_yaml, self.args["batch"])
        self.state.epoch, self.state.iteration, self.state.metrics, self.state.output = 0, 0, {}, None
        t0 = time.perf_counter()
        try:
            self.fire_event(Events.STARTED)
            trainer = _trainer_class(self.salt_pepper, self.args["seed"])
            if not resume and self.run_dir.exists():
                shutil.rmtree(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            state_file.write_text(json.dumps({"fingerprint": key, "complete": False}))
            yolo = YOLO(str(last) if resume else self.model, task="detect")
            if not self.multi_device():  # Ultralytics' DDP workers get a pickled copy of the callbacks: not this engine
                yolo.add_callback("on_fit_epoch_end", self._epoch_end)
            if resume:
                logger.info("detector: resuming the interrupted run from %s", last)
                workers, cache = self.args.get("workers", 0), self.args.get("cache", False)
                yolo.train(
                    resume=True, trainer=trainer, data=self.data_yaml, device=self.device, workers=workers, cache=cache
                )
            else:
                yolo.train(trainer=trainer, data=self.data_yaml, device=self.device, **self.args)
        except Exception as e:
            self._fire_event(Events.EXCEPTION_RAISED, e)  # as Ignite does: e.g. StatsHandler logs it
            raise
        seconds = time.perf_counter() - t0
        rows = _results(self.run_dir)
        if self.multi_device():
            self._replay(rows)
        final = rows[-1] if rows else {}
        summary = {
            "mode": "resumed" if resume else "trained",
            "train_seconds": round(seconds, 1),
            "epochs_done": len(rows),
            "mAP50_val": float(final.get("metrics/mAP50(B)", "nan")),
            "mAP50_95_val": float(final.get("metrics/mAP50-95(B)", "nan")),
        }
        state_file.write_text(json.dumps({"fingerprint": key, "complete": True, **summary}))
        info = {"run_dir": str(self.run_dir), **summary}
        save_detector(best if best.is_file() else last, self.weights_out, self.args["imgsz"], self.margin, info)
        try:  # the trained weights are safe: a failure here costs the floor (no gating), never the training
            floor, details = choose_confidence_floor(
                self.weights_out, self.data_yaml, None if self.device == "cpu" else self.torch_device
            )
        except Exception as err:
            floor, details = 0.0, {"rule": f"not chosen ({type(err).__name__}: {err})", "correct_boxes": 0}
            logger.warning("detector: no confidence floor: %s", details["rule"])
        set_confidence_floor(self.weights_out, floor, details)
        summary["confidence_floor"] = floor
        logger.info(
            "detector: confidence floor %.3f (%s; %d correct boxes)", floor, details["rule"], details["correct_boxes"]
        )
        self.state.summary = summary
        self.fire_event(Events.COMPLETED)
        logger.info("detector: %s in %.0f s, weights %s", summary["mode"], seconds, self.weights_out)
        return summary


__all__ = ["DetectorTrainer", "YoloDeviceAugment", "YoloSaltPepper", "epoch_metrics", "metric_name", "set_threads"]
