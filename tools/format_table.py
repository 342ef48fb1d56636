"""The per-file-format table of a run, as markdown for the model card: ``python -m tools.format_table runs/demo``.

Reads ``by_format`` from ``<run>/detector/evaluation.json`` and ``<run>/classifier/evaluation.json`` (the test split;
written by ``detector_evaluate.yaml`` and ``classifier_evaluate.yaml``) and prints one table: per format (names:
``scripts/file_formats.py``) the test images and fractures, the detector's hit rate (box contains both landmarks),
classifier C's ROC AUC and its accuracy, sensitivity and specificity at its stored threshold, then all formats
together. ``n/a``: undefined in that format (an AUC with one class only); ``-``: that stage was not evaluated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COLUMNS = (
    "format",
    "images",
    "fractures",
    "detector hit rate",
    "C AUC",
    "accuracy at threshold",
    "sensitivity",
    "specificity",
)
CLASSIFIER_KEYS = {  # column -> key of the classifier's figures
    "C AUC": "roc_auc",
    "accuracy at threshold": "accuracy",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
}
ALL = "all formats"


def load_evaluation(run_dir: str | Path, stage: str) -> dict | None:
    """``<run_dir>/<stage>/evaluation.json``, or None if absent."""
    path = Path(run_dir) / stage / "evaluation.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.3f}"
    return str(value)


def _overall(detector: dict | None, classifier: dict | None) -> dict:
    """The ``all formats`` row from the stages' top-level figures."""
    row: dict = {"format": ALL}
    if detector:
        row["images"], row["detector hit rate"] = detector.get("images"), detector.get("contains_both_landmarks")
    if classifier:
        row["images"], row["fractures"] = classifier.get("n_images"), classifier.get("n_fractures")
        for column, key in CLASSIFIER_KEYS.items():
            row[column] = classifier.get("metrics", {}).get(key, {}).get("value")
    return row


def format_rows(detector: dict | None, classifier: dict | None) -> list[dict]:
    """One dict per format (column name -> value; a column missing when its stage was not evaluated), then all."""
    det, clf = (detector or {}).get("by_format", {}), (classifier or {}).get("by_format", {})
    rows = []
    for name in sorted(set(det) | set(clf)):
        row: dict = {"format": name}
        if name in det:
            row["images"], row["detector hit rate"] = det[name]["n_images"], det[name]["hit_rate"]
        if name in clf:
            row["images"], row["fractures"] = clf[name]["n_images"], clf[name]["n_fractures"]
            row.update({column: clf[name][key] for column, key in CLASSIFIER_KEYS.items()})
        rows.append(row)
    return rows + [_overall(detector if det else None, classifier if clf else None)]


def markdown_table(rows: list[dict]) -> str:
    """``rows`` as a markdown table with ``COLUMNS``."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) if c in row else "-" for c in COLUMNS) + " |")
    return "\n".join(lines)


def run_table(run_dir: str | Path) -> str:
    """The markdown table of ``run_dir``; ``SystemExit`` with the reason when no stage has a per-format breakdown."""
    detector, classifier = load_evaluation(run_dir, "detector"), load_evaluation(run_dir, "classifier")
    if not any(e and "by_format" in e for e in (detector, classifier)):
        raise SystemExit(
            f"{run_dir}: no detector/ or classifier/ evaluation.json with 'by_format': run the stages' evaluation "
            "(detector_evaluate.yaml, classifier_evaluate.yaml) with this version first"
        )
    for stage, evaluation in (("detector", detector), ("classifier", classifier)):
        if evaluation and "by_format" not in evaluation:
            print(f"{stage}/evaluation.json has no 'by_format' (evaluated before it existed): '-'", file=sys.stderr)
    return markdown_table(format_rows(detector, classifier))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a training run's output folder, e.g. runs/demo")
    print(run_table(parser.parse_args().run_dir))


if __name__ == "__main__":
    main()
