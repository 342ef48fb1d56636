"""One row of the site table: the detector's and the classifier's test-split evaluations of one models folder on
one dataset, run exactly as the chained training runs them (``scripts.pipeline``: common.yaml + the stage's configs +
its evaluate config + the profile, with ``dataset_dir``, ``output_dir`` and ``models_dir`` overridden).

Run: ``PYTHONPATH=bundle python -m tools.site_eval --dataset_dir data/site_b --models_dir bundle/models
--output_dir runs/site_eval/b_a --name "site B (a)"``. It writes ``<output_dir>/detector/evaluation.json`` and
``<output_dir>/classifier/evaluation.json`` (with their figures and ``by_format`` tables), ``site_eval.json`` and
prints the row (Markdown); ``--table FILE`` appends it to FILE too (a header first if FILE is new).

Columns: test images; boxes (% of test images whose detector box holds both landmarks); mean IoU of the box with
the landmark box; ROC AUC with its patient-bootstrap 95% CI; sensitivity and specificity at the classifier's own
threshold (chosen on its validation split when it was trained); detector misses (test images without a box at the
detector's confidence floor: the classifier's crop of such an image falls back to its landmark box, as in training,
so its figures there are optimistic). The same figures per file format follow the row (``by_format``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

HEADER = (
    "| site / weights | test images | boxes holding both landmarks | mean IoU | ROC AUC [95% CI] "
    "| sensitivity | specificity | detector misses |"
)
RULE = "|---|---|---|---|---|---|---|---|"
STAGES = ("detector", "classifier")


def evaluate(
    dataset_dir: str | Path,
    models_dir: str | Path,
    output_dir: str | Path,
    profile: str = "quick",
    overrides: dict[str, Any] | None = None,
) -> dict[str, dict]:
    """Run the detector's and the classifier's evaluate configs; return their ``evaluation.json`` contents."""
    from monai.bundle import ConfigParser

    from scripts.pipeline import CONFIGS, run_workflow, stage_files

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    stages = {s["name"]: s for s in parser.get("stages")}
    base = {"dataset_dir": str(dataset_dir), "output_dir": str(output_dir), "models_dir": str(models_dir)}
    results = {}
    for name in STAGES:
        run_workflow(stage_files(stages[name], "evaluate", profile), {**base, **(overrides or {})}, tracking=None)
        results[name] = json.loads((Path(output_dir) / name / "evaluation.json").read_text())
    return results


def summarise(results: dict[str, dict]) -> dict[str, Any]:
    """The row's figures from the two ``evaluation.json`` contents."""
    det, cls = results["detector"], results["classifier"]
    metrics = cls["metrics"]
    return {
        "test_images": det["images"],
        "boxes_pct": 100 * det["contains_both_landmarks"],
        "mean_iou": det["mean_iou"],
        "auc": metrics["roc_auc"]["value"],
        "auc_ci": [metrics["roc_auc"]["ci_low"], metrics["roc_auc"]["ci_high"]],
        "sensitivity": metrics["sensitivity"]["value"],
        "specificity": metrics["specificity"]["value"],
        "threshold": cls["threshold"],
        "detector_misses": det["failures"],
        "confusion": cls["confusion_text"],
        "by_format": {"detector": det.get("by_format", {}), "classifier": cls.get("by_format", {})},
    }


def table_row(name: str, s: dict[str, Any]) -> str:
    """One Markdown row under ``HEADER``."""
    lo, hi = s["auc_ci"]
    return (
        f"| {name} | {s['test_images']} | {s['boxes_pct']:.1f}% | {s['mean_iou']:.3f} | "
        f"{s['auc']:.3f} [{lo:.3f}, {hi:.3f}] | {s['sensitivity']:.3f} | {s['specificity']:.3f} | "
        f"{s['detector_misses']} |"
    )


def format_lines(s: dict[str, Any]) -> list[str]:
    """One line per file format: boxes, IoU, detector misses, and the classifier's AUC and accuracy."""
    det, cls = s["by_format"]["detector"], s["by_format"]["classifier"]
    lines = []
    for fmt in sorted(set(det) | set(cls)):
        d, c = det.get(fmt, {}), cls.get(fmt, {})
        auc, nan = c.get("roc_auc"), float("nan")
        lines.append(
            f"  {fmt}: {d.get('n_images', c.get('n_images'))} images, boxes {100 * d.get('hit_rate', nan):.1f}%,"
            f" IoU {d.get('mean_iou', nan):.3f}, misses {d.get('failures')},"
            f" AUC {'n/a' if auc is None else f'{auc:.3f}'}, accuracy {c.get('accuracy', nan):.3f}"
        )
    return lines


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got '{pair}'")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, evaluate, print the row and write ``site_eval.json`` (and ``--table``)."""
    p = argparse.ArgumentParser(prog="python -m tools.site_eval", description=__doc__.splitlines()[0])
    p.add_argument("--dataset_dir", required=True, type=Path)
    p.add_argument("--models_dir", required=True, type=Path, help="detector.pt and classifier.pt (read only)")
    p.add_argument("--output_dir", required=True, type=Path, help="split, crops and evaluations go here")
    p.add_argument("--profile", default="quick", help="the profile the weights were trained with")
    p.add_argument("--name", default=None, help="the row's first column (default: the dataset folder's name)")
    p.add_argument("--table", type=Path, default=None, help="append the row to this Markdown file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override (YAML value)")
    args = p.parse_args(argv)
    results = evaluate(args.dataset_dir, args.models_dir, args.output_dir, args.profile, _overrides(args.set))
    summary = summarise(results)
    name = args.name or args.dataset_dir.name
    row = table_row(name, summary)
    record = {"name": name, "dataset": args.dataset_dir.name, "models": args.models_dir.name, **summary, "row": row}
    (args.output_dir / "site_eval.json").write_text(json.dumps(record, indent=2))
    if args.table:
        new = not args.table.is_file()
        with open(args.table, "a") as f:
            f.write((f"{HEADER}\n{RULE}\n" if new else "") + row + "\n")
    print(HEADER, RULE, row, "by file format:", *format_lines(summary), sep="\n")


if __name__ == "__main__":
    main()
