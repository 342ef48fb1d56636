"""The bundle's inference workflow kept warm: networks loaded once, then one file at a time.

``WarmInference`` builds ``configs/inference.yaml`` through MONAI's ``ConfigWorkflow`` (the same preprocessing,
detector, ``FractureInferer``, calibration, operating points and writer as ``python -m monai.bundle run``) once,
and then runs its ``SupervisedEvaluator`` over a one-item data loader per call. The record returned is what the
command writes to ``<stem>.json``; the PNGs (and DICOM SC/SR when asked) are written to ``output_dir`` beside it.
The batch command's handlers (``summary.csv``, one MLflow run per call) are left out: a service or DICOM node
keeps its own log, and callers name inputs by an identifier of their own, never by a patient's file name.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import torch

from scripts.inference_writer import save_png
from scripts.visualise import to_gray8

from . import BUNDLE_ROOT

VIEWS = ("xray", "crop", "repaired")  # predict(views=True): <stem>_xray.png, <stem>_crop.png, <stem>_repaired.png


class WarmInference:
    """The bundle's inference with its weights loaded once; ``predict`` one file at a time (thread-safe, serial).

    Args:
        output_dir: where each call's JSON, PNGs (and DICOM) are written, named by the call's ``stem``.
        models_dir: the trained weights (default: the bundle's ``models/``).
        device: torch device (default: the config's, CUDA when available).
        dicom_out: also write the DICOM Secondary Capture and Structured Report.
        keep_patient_identity: SC/SR join the source study with its patient modules (PACS use); else de-identified.
        allow_any_modality: assess DICOM that is not a head radiograph (default: refused as "not assessed").
        overrides: further config overrides by id, as ``--id value`` on the command line.
    """

    def __init__(
        self,
        output_dir: str | Path,
        models_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        dicom_out: bool = False,
        keep_patient_identity: bool = False,
        allow_any_modality: bool = False,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        from monai.bundle import ConfigWorkflow

        self.output_dir = Path(output_dir)
        empty = self.output_dir / ".no_inputs"  # the config's input folder: none, each call brings its own file
        empty.mkdir(parents=True, exist_ok=True)
        settings: dict[str, Any] = {
            "input_dir": str(empty),
            "output_dir": str(self.output_dir),
            "dicom_out": bool(dicom_out),
            "dicom_keep_patient_identity": bool(keep_patient_identity),
            "allow_any_modality": bool(allow_any_modality),
            "handlers": [],  # no summary.csv and no MLflow run per call
            "write_in_background": False,  # predict returns the record after its files are written
        }
        if models_dir is not None:
            settings["models_dir"] = str(models_dir)
        if device is not None:
            settings["device"] = torch.device(device)
        settings.update(overrides or {})
        self.workflow = ConfigWorkflow(
            config_file=str(BUNDLE_ROOT / "configs" / "inference.yaml"),
            meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"),
            logging_file=False,
            workflow_type="infer",
            **settings,
        )
        self.workflow.initialize()  # every weights file present and loading, or one line and SystemExit
        parser = self.workflow.parser
        self.evaluator = parser.get_parsed_content("evaluator")
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.device = torch.device(parser.get_parsed_content("device"))
        self.thresholds = dict(parser.get_parsed_content("thresholds"))
        self.threshold = float(parser.get_parsed_content("threshold"))
        self.temperature = float(parser.get_parsed_content("temperature"))
        self.version = json.loads((BUNDLE_ROOT / "configs" / "metadata.json").read_text())["version"]
        self._lock = threading.Lock()
        self._repaired: torch.Tensor | None = None  # the region generator's last output, kept for ``views``
        region_network = getattr(self.evaluator.inferer, "region_network", None)
        if region_network is not None:
            region_network.register_forward_hook(self._keep_repaired)

    def _keep_repaired(self, _module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        """Forward hook on the G-D-C step-2 generator: its repaired crop, computed anyway for the region map."""
        self._repaired = output.detach()

    def info(self) -> dict[str, Any]:
        """What a health check reports: bundle version, device and the operating points."""
        return {
            "bundle_version": self.version,
            "device": str(self.device),
            "threshold": self.threshold,
            "thresholds": dict(self.thresholds),
            "temperature": self.temperature,
        }

    def predict(self, path: str | Path, stem: str, name: str | None = None, views: bool = False) -> dict[str, Any]:
        """Run one file; return its record (the JSON's content; PNG and DICOM names relative to ``output_dir``).

        ``stem`` names the outputs (``<stem>.json``, ``<stem>_overlay.png``...); ``name`` is how the record and
        any error message call the input (default ``stem``: the caller's identifier, not the uploaded name).
        A file that cannot be read or assessed gives a record with ``error``, never an exception.
        ``views``: also write what a viewer shows (``VIEWS``): the X-ray as the networks read it and, when a nasal
        bone was found, its crop and the step-2 generator's repair of it, named in the record's ``views``
        (not in the JSON file).
        """
        from monai.data import DataLoader, Dataset

        item = {"image": str(path), "path": str(path), "name": name or stem, "stem": stem}
        loader = DataLoader(Dataset([item], transform=self.preprocessing), batch_size=1, num_workers=0)
        with self._lock:
            self._repaired = None
            self.evaluator.data_loader = loader
            self.evaluator.state.epoch_length = 1
            self.evaluator.state.output = None
            try:
                self.evaluator.run()
            except BaseException:
                # Ignite keeps the failed run's generator, and its next run() would silently do nothing: drop it
                self.evaluator._internal_run_generator = None
                raise
            output = self.evaluator.state.output
            if not output or output[0].get("record", {}).get("image") != item["name"]:
                raise RuntimeError(f"{item['name']}: the inference workflow gave no result for this call")
            record = dict(output[0]["record"])
            if views and "error" not in record:
                record["views"] = self._write_views(stem, record.get("nasal_bone_box") is not None)
            return record

    def _write_views(self, stem: str, found: bool) -> dict[str, str]:
        """The last call's X-ray (and crop and repaired crop, when ``found``) as 8-bit PNGs; their file names."""
        state = self.evaluator.state
        pictures = {"xray": state.batch[0]["xray"]}
        if found and self._repaired is not None:
            pictures |= {"crop": state.output[0]["image"], "repaired": self._repaired[0]}
        names = {}
        for kind, picture in pictures.items():
            gray = torch.as_tensor(picture).detach().float().cpu().numpy().reshape(picture.shape[-2:])
            names[kind] = f"{stem}_{kind}.png"
            save_png(self.output_dir / names[kind], to_gray8(gray))  # the writer's fast lossless PNG
        return names

    def timed_predict(self, path: str | Path, stem: str, name: str | None = None) -> tuple[dict[str, Any], float]:
        """``predict`` and its wall time in seconds."""
        start = time.perf_counter()
        record = self.predict(path, stem, name)
        return record, time.perf_counter() - start
