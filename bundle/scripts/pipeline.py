"""Chained training: every stage in order, each a MONAI bundle workflow, tracked as nested MLflow runs.

``train.yaml``'s ``training`` calls ``train_all``. For each stage it merges
``common.yaml + <stage configs> + profiles/<profile>.yaml`` (the same files a user would pass to
``python -m monai.bundle run`` for that stage alone), applies the pipeline's overrides (data,
output, models, tracking), trains, then runs the stage's evaluate config. A stage whose weights are
already in ``models_dir`` is skipped unless it is named in ``retrain`` (or ``retrain`` is true).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow

from . import BUNDLE_ROOT
from .tracking import Tracker, default_tracking_uri, read_json, run_name

logger = logging.getLogger("nasal.pipeline")
CONFIGS = BUNDLE_ROOT / "configs"


def profile_file(profile: str) -> Path:
    """A profile name (``quick``, ``paper``, ``tiny``) or a path to a profile YAML file."""
    path = (
        Path(profile) if str(profile).endswith((".yaml", ".yml", ".json")) else CONFIGS / "profiles" / f"{profile}.yaml"
    )
    if not path.is_file():
        raise FileNotFoundError(f"profile '{profile}' not found at {path}")
    return path


def stage_files(stage: dict, kind: str, profile: str) -> list[str]:
    """The config files of one stage's ``train`` or ``evaluate`` job, in merge order."""
    files = [CONFIGS / "common.yaml", *(CONFIGS / f for f in stage["train"])]
    if kind == "evaluate":
        files += [CONFIGS / f for f in stage.get("evaluate", [])]
    return [str(f) for f in (*files, profile_file(profile))]


def run_workflow(files: list[str], overrides: dict[str, Any]) -> ConfigWorkflow:
    """Initialise, run and finalise one bundle workflow (``initialize``/``run``/``finalize`` keys)."""
    workflow = ConfigWorkflow(config_file=files, workflow_type=None, **overrides)
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    return workflow


def _wanted(stage: str, retrain: bool | list[str] | str) -> bool:
    if isinstance(retrain, bool):
        return retrain
    return stage in ([retrain] if isinstance(retrain, str) else list(retrain))


def train_all(
    stages: list[dict],
    profile: str = "quick",
    dataset_dir: str = "data/phantom",
    output_dir: str = "runs/default",
    models_dir: str | None = None,
    tracking_uri: str | None = None,
    retrain: bool | list[str] | str = False,
    evaluate: bool = True,
    experiment_name: str = "nasal_bone_fracture",
    stage_args: dict | None = None,
    only: list[str] | str | None = None,
) -> dict:
    """Train (and evaluate) ``stages`` in order; return and write ``output_dir/pipeline.json``."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    models = Path(models_dir) if models_dir else BUNDLE_ROOT / "models"
    models.mkdir(parents=True, exist_ok=True)
    tracking_uri = tracking_uri or default_tracking_uri(output)
    overrides = {
        "dataset_dir": str(dataset_dir),
        "output_dir": str(output),
        "models_dir": str(models),
        "tracking_uri": tracking_uri,
        "experiment_name": experiment_name,
        **(stage_args or {}),
    }
    only = [only] if isinstance(only, str) else only
    tracker = Tracker(tracking_uri, experiment_name, output)
    parent = tracker.start(run_name("pipeline"), tags={"profile": str(profile)})
    tracker.params(
        parent,
        {
            "profile": profile,
            "dataset_dir": dataset_dir,
            "models_dir": str(models),
            "stages": ",".join(s["name"] for s in stages),
            "retrain": str(retrain),
        },
    )
    summary: dict[str, Any] = {
        "profile": str(profile),
        "tracking_uri": tracking_uri,
        "parent_run_id": parent,
        "stages": {},
    }
    status = "FAILED"
    try:
        for i, stage in enumerate(stages):
            name = stage["name"]
            if only and name not in only:
                continue
            weights = [models / w for w in stage.get("weights", [])]
            if weights and all(w.is_file() for w in weights) and not _wanted(name, retrain):
                logger.info(
                    "[%d/%d] %s: weights exist in %s, skipped (retrain to redo)", i + 1, len(stages), name, models
                )
                summary["stages"][name] = {"status": "skipped (weights exist)"}
                continue
            summary["stages"][name] = _run_stage(stage, i, len(stages), profile, overrides, evaluate, tracker, parent)
        status = "FINISHED"
    finally:
        summary["status"] = status
        (output / "pipeline.json").write_text(json.dumps(summary, indent=2, default=str))
        tracker.artifact(parent, output / "pipeline.json")
        tracker.end(parent, status)
    return summary


def _run_stage(
    stage: dict, i: int, n: int, profile: str, overrides: dict, evaluate: bool, tracker: Tracker, parent: str
) -> dict:
    name = stage["name"]
    child_name = run_name(name)
    child = tracker.start(child_name, parent_id=parent, tags={"stage": name})
    stage_overrides = {**overrides, "mlflow_run_name": child_name}
    result: dict[str, Any] = {"run_id": child}
    try:
        logger.info("[%d/%d] %s: training (%s profile)", i + 1, n, name, profile)
        start = time.perf_counter()
        files = stage_files(stage, "train", profile)
        parser = ConfigParser()
        parser.read_config(files)
        parser.update(stage_overrides)
        tracker.params(
            child,
            {
                "config_files": ",".join(Path(f).name for f in files),
                **{
                    k: parser.get(k)
                    for k in (name, "dataset_dir", "crop_size", "crop_source", "box_margin")
                    if k in parser
                },
            },
        )
        stage_dir = Path(overrides["output_dir"]) / name
        stage_dir.mkdir(parents=True, exist_ok=True)
        parser.export_config_file(parser.get(), stage_dir / "config.yaml", fmt="yaml")
        tracker.artifact(child, stage_dir / "config.yaml", "config")
        run_workflow(files, stage_overrides)
        result["train_seconds"] = round(time.perf_counter() - start, 1)
        if evaluate and stage.get("evaluate"):
            logger.info("[%d/%d] %s: evaluating", i + 1, n, name)
            start = time.perf_counter()
            run_workflow(stage_files(stage, "evaluate", profile), stage_overrides)
            result["evaluate_seconds"] = round(time.perf_counter() - start, 1)
        results_dir = Path(overrides["output_dir"]) / stage.get("results", name)
        evaluation = read_json(results_dir / "evaluation.json")
        result["evaluation"] = evaluation
        tracker.metrics(child, {"train_seconds": result["train_seconds"], "evaluation": evaluation})
        for pattern in ("*.json", "*.png", "*.md", "*.csv"):
            for path in sorted(results_dir.glob(pattern)):
                tracker.artifact(child, path, "results")
        tracker.end(child)
        logger.info("[%d/%d] %s: done in %.0f s", i + 1, n, name, result["train_seconds"])
    except BaseException:
        tracker.end(child, "FAILED")
        raise
    return result
