"""The run report: ``python -m tools.report OUT [--inference_dir DIR] [--seeds SEEDS_JSON]`` writes OUT/report.html.

One self-contained HTML page (pictures embedded, system fonts, no script, nothing loaded from elsewhere) for a
clinician or an engineer: first a one-screen summary (the data and split; per stage the figures that matter with
their 95% intervals beside the thesis's; what they mean and what they do not), then each stage's tables and figures
(ROC with the operating points, reliability diagram, training curves read from the run's MLflow store, the
localisation gallery), the inference gallery with failures and "not assessable" images first, and the run's details
(stages, MLflow, configuration, raw JSON) folded away. With ``--seeds`` (``tools/seeds.py``'s ``seeds.json``) the
classifier and localisation figures also show mean [min, max] over seeds.

Everything is read from the files the stages wrote (results: ``results.py``; MLflow: ``mlflow_run.py``); no
absolute path of the machine appears on the page. The page is also logged as an artifact of the pipeline's parent
MLflow run, unless the run folder was copied or moved away from its artifact folder.
"""

from __future__ import annotations

import argparse
import html
import time
from pathlib import Path

from . import mlflow_run, page, sections
from .results import load

TITLE = "Nasal bone fracture detection: run report"


def write_report(
    run_dir: str | Path,
    inference_dir: str | Path | None = None,
    seeds: str | Path | None = None,
    log_to_mlflow: bool = True,
) -> Path:
    """Write ``run_dir/report.html`` from the run's results (and the seed table ``seeds``); return its path."""
    root = Path(run_dir)
    inference = Path(inference_dir) if inference_dir else root / "inference"
    res = load(root, seeds)
    info = res.pipeline or {}
    recorded = info.get("tracking_uri")
    mlflow = mlflow_run.client(mlflow_run.tracking_uri(root, recorded))
    curves = mlflow_run.training_curves(mlflow, info.get("stages", {})) if mlflow else {}
    parent = info.get("parent_run_id")
    why_not = (
        mlflow_run.artifact_check(mlflow, root, parent, bool(info.get("log_images")))
        if log_to_mlflow
        else "not asked for (--no_mlflow)"
    )
    command, where = mlflow_run.ui_command(root, recorded)
    ui = f"<code>{html.escape(command)}</code> ({html.escape(where)})"
    lines = [
        f"Open the same run in the MLflow UI: {ui}; the pipeline run is <code>{html.escape(str(parent))}</code>, "
        "each stage's run nested under it.",
        "This page is logged as an artifact of the pipeline run."
        if why_not is None
        else f"This page is not logged to MLflow: {html.escape(why_not)}.",
    ]
    stamp = (
        time.strftime("%Y-%m-%d %H:%M", time.localtime((root / "pipeline.json").stat().st_mtime))
        if (root / "pipeline.json").is_file()
        else ""
    )
    parts = [root.resolve().name, f"{info['profile']} profile" if info.get("profile") else "", stamp]
    subtitle = html.escape(" · ".join(p for p in parts if p))
    body = "".join(
        [
            sections.summary(res, ui),
            sections.data_section(res),
            sections.detector_section(res, curves, root),
            sections.classifier_section(res, curves, root),
            sections.localisation_section(res, curves, root),
            sections.gallery_section(inference, root),
            sections.details_section(res, root, lines),
        ]
    )
    out = root / "report.html"
    out.write_text(page.page(TITLE, subtitle, body), encoding="utf-8")
    if why_not is None and mlflow_run.log_report(mlflow, parent, out):
        print(f"report logged to MLflow run {parent}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="the pipeline's output folder (OUT of make demo / train)")
    parser.add_argument("--inference_dir", default=None, help="the inference output folder (default OUT/inference)")
    parser.add_argument("--seeds", default=None, help="seeds.json of tools/seeds.py: figures over seeds")
    parser.add_argument("--no_mlflow", action="store_true", help="do not log the page to the run's MLflow store")
    args = parser.parse_args()
    print(write_report(args.run_dir, args.inference_dir, args.seeds, not args.no_mlflow))
