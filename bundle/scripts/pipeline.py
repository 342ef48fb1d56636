"""Chained training: every stage in order, each a MONAI bundle workflow, tracked as nested MLflow runs.

``train.yaml``'s ``training`` calls ``train_all``. For each stage it merges
``common.yaml + <stage configs> + profiles/<profile>.yaml`` (the same files a user would pass to
``python -m monai.bundle run`` for that stage alone), applies the pipeline's overrides (data,
output, models, tracking), trains, then runs the stage's evaluate config. A stage is skipped only when
its weights in ``models_dir`` record (``<weights>.fingerprint.json``) the fingerprint it would train with
now: its config values, the dataset, the split and the upstream weights (``stage_parts``); otherwise it
trains and the log says why. A stage named in ``retrain`` (or every stage, ``retrain: true``) always
trains, from scratch: its old resumption checkpoints under ``output_dir/<stage>`` are deleted first.

Started by ``torchrun`` (several processes), rank 0 leads: it checks the data, decides, tracks and writes as above,
and hands each crop stage's job (its configs plus its ``multi_gpu`` ones, e.g. ``multi_gpu_train.yaml``) to the other
ranks, which train it with it in DDP; the processes keep one process group for the whole chain. What one process
does (the detector, which Ultralytics trains on the node's GPUs with DDP workers of its own, and every evaluation)
rank 0 runs as a child process outside the group while the others wait.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

from . import BUNDLE_ROOT, distributed, fingerprint
from .data_validation import require_valid_dataset
from .resume import clear_checkpoints
from .splits import ensure_split
from .tracking import OFFLINE_LOG, Tracker, default_tracking_uri, read_json, run_name

logger = logging.getLogger("nasal.pipeline")
CONFIGS = BUNDLE_ROOT / "configs"
# config values (besides the stage's own section) that change what a stage learns
SHARED_KEYS = (
    "seed",
    "split_fractions",
    "split_seed",
    "box_margin",
    "crop_size",
    "crop_source",
    "crop_fallback_to_landmarks",
)
STAGE_KEYS = {"detector": ("seed", "split_fractions", "split_seed", "box_margin"), "gd": SHARED_KEYS + ("gan",)}
STAGE_KEYS |= {"gdc1": STAGE_KEYS["gd"], "gdc2": STAGE_KEYS["gd"]}
STAGE_SIDECAR = "stage.fingerprint.json"


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


def tracking_settings() -> dict:
    """MONAI's ``--tracking mlflow`` settings, except that no handler ends the run: ``train_all`` ends the stage's
    nested run after its evaluation has logged into it too (one run per stage)."""
    settings = copy.deepcopy(DEFAULT_MLFLOW_SETTINGS)
    for engine in ("trainer", "validator", "evaluator"):
        handler = settings["configs"][engine]
        handler["_target_"] = "scripts.tracking.ResilientMLFlowHandler"  # an outage never stops the stage
        handler["offline_log"] = f"$os.path.join(@output_dir, '{OFFLINE_LOG}')"
        if engine != "validator":
            handler["close_on_complete"] = False
    return settings


def run_workflow(files: list[str], overrides: dict[str, Any], tracking: str | dict | None = "mlflow") -> ConfigWorkflow:
    """Initialise, run and finalise one bundle workflow (``initialize``/``run``/``finalize`` keys).

    ``tracking="mlflow"`` is MONAI's own ``--tracking mlflow``: it adds an ``MLFlowHandler`` to the engines at
    ``train#trainer``, ``validate#evaluator`` and ``evaluator``, logging to the config's ``tracking_uri``,
    ``experiment_name`` and ``run_name`` (the stage's nested run, created by ``train_all``).
    """
    workflow = ConfigWorkflow(config_file=files, workflow_type=None, tracking=tracking, **overrides)
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    return workflow


def run_workflow_alone(files: list[str], overrides: dict[str, Any], tracking: dict | None, job_file: Path) -> None:
    """``run_workflow`` in a child process (``python -m monai.bundle run --args_file job_file``) without torchrun's
    variables: a single process outside this one's process group."""
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps({"config_file": files, "tracking": tracking, **overrides}, indent=2, default=str))
    command = [sys.executable, "-m", "monai.bundle", "run", "--args_file", str(job_file)]
    subprocess.run(command, env=distributed.plain_environment(), check=True)


def node_gpus() -> str | None:
    """This node's GPUs for Ultralytics' own multi-GPU training (``"0,1,2,3"``: one a torchrun process), or None
    (the CPU, or a single GPU)."""
    n = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return ",".join(str(i) for i in range(n)) if torch.cuda.is_available() and n > 1 else None


def follow() -> None:
    """A rank above 0 of a torchrun launch: train each crop stage rank 0 hands over (DDP), until it hands None."""
    while (job := distributed.share()) is not None:
        run_workflow(job["files"], job["overrides"], tracking=None)


def _wanted(stage: str, retrain: bool | list[str] | str) -> bool:
    if isinstance(retrain, bool):
        return retrain
    return stage in ([retrain] if isinstance(retrain, str) else list(retrain))


def stage_parser(stage: dict, profile: str, overrides: dict) -> ConfigParser:
    """The stage's merged training config with the pipeline's overrides (not resolved)."""
    parser = ConfigParser()
    parser.read_config(stage_files(stage, "train", profile))
    parser.update(overrides)
    return parser


def stage_parts(stage: dict, upstream: list[Path], parser: ConfigParser) -> tuple[dict, dict]:
    """The fingerprint parts of a stage and the readable values behind them.

    Parts: ``config`` (the stage's section and ``STAGE_KEYS``, or the stage's ``fingerprint_keys``), ``dataset``
    (``dataset.csv`` and its files), ``split`` (the split file, made here if absent), each upstream weights file and the
    stage config's ``fingerprint_extra`` (files it names, by content: the classifier's ``pretrained_weights``).
    """
    name = stage["name"]
    keys = (name, *stage.get("fingerprint_keys", STAGE_KEYS.get(name, SHARED_KEYS)))
    values = {k: parser.get(k) for k in keys if k in parser}
    dataset_dir = parser.get_parsed_content("dataset_dir")
    fractions, seed = parser.get_parsed_content("split_fractions"), parser.get_parsed_content("split_seed")
    split_file = ensure_split(dataset_dir, parser.get_parsed_content("split_file"), fractions, seed)
    parts = {
        "config": fingerprint.digest(fingerprint.without(values)),
        "dataset": fingerprint.dataset_fingerprint(dataset_dir),
        "split": fingerprint.file_fingerprint(split_file),
        **{w.name: fingerprint.file_fingerprint(w) for w in upstream},
        # what the config only names: e.g. the classifier's ImageNet weights file, by content
        **(parser.get_parsed_content("fingerprint_extra") if "fingerprint_extra" in parser else {}),
    }
    return parts, {"dataset_dir": str(dataset_dir), "split_file": str(split_file), "config": values}


def upstream_weights(stage: dict, earlier: list[dict], parser: ConfigParser, models: Path) -> list[Path]:
    """The weights files this stage reads (its ``reads`` list in train.yaml; else every earlier stage's): the
    config's ``<name>_weights`` value where it has one (an override may point at another run's file), else
    ``models/<name>``."""
    names = stage.get("reads", [w for s in earlier for w in s.get("weights", [])])
    out = []
    for w in names:
        key = f"{Path(w).stem}_weights"
        out.append(Path(parser.get_parsed_content(key)) if key in parser else models / w)
    return out


def stage_decision(name: str, weights: list[Path], parts: dict, retrain: bool | list[str] | str) -> tuple[bool, str]:
    """Whether a stage trains, and why: ``(False, reason)`` only if every weights file records ``parts``."""
    if _wanted(name, retrain):
        return True, "retrain requested"
    if not weights:
        return True, "no weights to check"
    missing = [w for w in weights if not w.is_file()]
    if missing:
        return True, f"no weights at {missing[0]}"
    for w in weights:
        recorded = fingerprint.read(w)
        if recorded and recorded.get("file") not in (None, fingerprint.file_fingerprint(w)):
            return True, f"{w.name} was replaced since its fingerprint was recorded"
        reason = fingerprint.why(recorded, parts)
        if reason:
            return True, f"{reason} ({w.name})" if reason == "no fingerprint recorded" else reason
    return False, f"weights match (fingerprint {fingerprint.combine(parts)})"


def prepare_stage_dir(stage_dir: Path, parts: dict, fresh: bool) -> None:
    """Delete the stage's old resumption checkpoints if ``fresh`` or made from other inputs; record ``parts``."""
    sidecar = stage_dir / STAGE_SIDECAR
    reason = "retrain requested" if fresh else fingerprint.why(fingerprint.read(sidecar), parts)
    if reason:
        clear_checkpoints(stage_dir, reason, recursive=True)
    fingerprint.record(sidecar, parts)


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
    log_images: bool = False,
    ddp_timeout_minutes: float = 720.0,
) -> dict:
    """Train (and evaluate) ``stages`` in order; return and write ``output_dir/pipeline.json``.

    ``log_images``: pictures made from the X-rays go to MLflow too (every stage's ``log_images``). Started by
    torchrun, the processes join one process group (whose waits may last ``ddp_timeout_minutes``: rank 0 trains the
    detector and evaluates alone); rank 0 leads and returns the summary, the others ``follow`` and return ``{}``.
    """
    if not distributed.launched():
        return _train_all(**{k: v for k, v in locals().items() if k != "ddp_timeout_minutes"})
    leader_args = {k: v for k, v in locals().items() if k != "ddp_timeout_minutes"}
    distributed.start(distributed.local_device(), timeout_minutes=ddp_timeout_minutes)
    try:
        if not distributed.is_main():
            follow()
            return {}
        summary = _train_all(**leader_args)
        distributed.share(None)  # the other ranks stop following
        return summary
    finally:
        distributed.stop()


def _train_all(
    stages: list[dict],
    profile: str,
    dataset_dir: str,
    output_dir: str,
    models_dir: str | None,
    tracking_uri: str | None,
    retrain: bool | list[str] | str,
    evaluate: bool,
    experiment_name: str,
    stage_args: dict | None,
    only: list[str] | str | None,
    log_images: bool,
) -> dict:
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
        "log_images": bool(log_images),
        **(stage_args or {}),
    }
    only = [only] if isinstance(only, str) else only
    # the data is checked first, all of it at once: training refuses to start on any error (scripts/data_validation)
    first = stage_parser(stages[0], profile, overrides)
    require_valid_dataset(
        dataset_dir,
        first.get_parsed_content("split_file"),
        first.get_parsed_content("split_fractions"),
        first.get_parsed_content("split_seed"),
    )
    tracker = Tracker(tracking_uri, experiment_name, output)
    parent = tracker.start(run_name("pipeline"), tags={"profile": str(profile)})
    tracker.params(
        parent,
        {
            "profile": profile,
            "dataset": Path(dataset_dir).name,  # folder names only: paths on hospital machines can identify
            "models": models.name,
            "stages": ",".join(s["name"] for s in stages),
            "retrain": str(retrain),
        },
    )
    summary: dict[str, Any] = {
        "profile": str(profile),
        "tracking_uri": tracking_uri,
        "parent_run_id": parent,
        "log_images": bool(log_images),  # the run report goes to a remote MLflow store only with it (tools/report)
        "stages": {},
    }
    status = "FAILED"
    try:
        for i, stage in enumerate(stages):
            name = stage["name"]
            if only and name not in only:
                continue
            weights = [models / w for w in stage.get("weights", [])]
            parser = stage_parser(stage, profile, overrides)
            parts, inputs = stage_parts(stage, upstream_weights(stage, stages[:i], parser, models), parser)
            train, reason = stage_decision(name, weights, parts, retrain)
            if not train:
                logger.info("[%d/%d] %s: skipped: %s", i + 1, len(stages), name, reason)
                summary["stages"][name] = {"status": f"skipped ({reason})"}
                continue
            verb = "retraining" if any(w.is_file() for w in weights) else "training"
            logger.info("[%d/%d] %s: %s: %s", i + 1, len(stages), name, verb, reason)
            prepare_stage_dir(output / name, parts, fresh=_wanted(name, retrain))
            summary["stages"][name] = _run_stage(
                stage, i, len(stages), profile, overrides, evaluate, tracker, parent, parser
            )
            summary["stages"][name]["reason"] = reason
            for w in weights:
                fingerprint.record(w, parts, inputs)
        status = "FINISHED"
    finally:
        summary["status"] = status
        (output / "pipeline.json").write_text(json.dumps(summary, indent=2, default=str))
        tracker.artifact(parent, output / "pipeline.json")
        tracker.end(parent, status)
    return summary


def _train_stage(stage: dict, files: list[str], overrides: dict, stage_dir: Path) -> None:
    """Train one stage: in this process; under torchrun (rank 0), a crop stage in DDP on every rank (with its
    ``multi_gpu`` configs), the detector in a child process where Ultralytics uses the node's GPUs."""
    if distributed.world_size() == 1:
        run_workflow(files, overrides, tracking_settings())
    elif stage.get("multi_gpu"):
        files = [*files, *(str(CONFIGS / f) for f in stage["multi_gpu"])]
        distributed.share({"files": files, "overrides": overrides})
        run_workflow(files, overrides, tracking_settings())
    else:
        job = {**overrides, "detector#devices": node_gpus()}
        run_workflow_alone(files, job, tracking_settings(), stage_dir / "train_job.json")


def _run_stage(
    stage: dict,
    i: int,
    n: int,
    profile: str,
    overrides: dict,
    evaluate: bool,
    tracker: Tracker,
    parent: str,
    parser: ConfigParser,
) -> dict:
    """Train (then evaluate) one stage in its nested run; ``parser`` is its merged config (``stage_parser``)."""
    name = stage["name"]
    child_name = run_name(name)
    child = tracker.start(child_name, parent_id=parent, tags={"stage": name})
    stage_overrides = {**overrides, "run_name": child_name}
    result: dict[str, Any] = {"run_id": child}
    try:
        logger.info("[%d/%d] %s: training (%s profile)", i + 1, n, name, profile)
        start = time.perf_counter()
        files = stage_files(stage, "train", profile)
        tracker.params(
            child,
            {
                "config_files": ",".join(Path(f).name for f in files),
                **{k: parser.get(k) for k in (name, "crop_size", "crop_source", "box_margin") if k in parser},
                "dataset": Path(overrides["dataset_dir"]).name,
            },
        )
        stage_dir = Path(overrides["output_dir"]) / name
        stage_dir.mkdir(parents=True, exist_ok=True)
        # the executed config, as MONAI's tracking writes it and logs it into the stage's run
        stage_overrides["save_execute_config"] = str(stage_dir.resolve() / "config.json")
        _train_stage(stage, files, stage_overrides, stage_dir)
        result["train_seconds"] = round(time.perf_counter() - start, 1)
        if evaluate and stage.get("evaluate"):
            logger.info("[%d/%d] %s: evaluating", i + 1, n, name)
            start = time.perf_counter()
            files = stage_files(stage, "evaluate", profile)
            if distributed.world_size() > 1:
                run_workflow_alone(files, stage_overrides, tracking_settings(), stage_dir / "evaluate_job.json")
            else:
                run_workflow(files, stage_overrides, tracking_settings())
            result["evaluate_seconds"] = round(time.perf_counter() - start, 1)
        results_dir = Path(overrides["output_dir"]) / stage.get("results", name)
        evaluation = read_json(results_dir / "evaluation.json")
        result["evaluation"] = evaluation
        tracker.metrics(child, {"train_seconds": result["train_seconds"], "evaluation": evaluation})
        # pictures (galleries of X-rays and crops, plots) only with log_images: they leave the machine with a remote
        # tracking server; they are in the stage's folder either way
        patterns = ("*.json", "*.md", "*.csv") + (("*.png",) if parser.get("log_images", False) else ())
        for pattern in patterns:
            for path in sorted(results_dir.glob(pattern)):
                tracker.artifact(child, path, "results")
        tracker.end(child)
        logger.info("[%d/%d] %s: done in %.0f s", i + 1, n, name, result["train_seconds"])
    except BaseException:
        tracker.end(child, "FAILED")
        raise
    return result
