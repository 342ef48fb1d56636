"""One HTML page per run: detection, classification and localisation results and a gallery of overlays.

Everything on the page is read from files the stages wrote (``<stage>/evaluation.json`` and the
figures beside it, the inference ``summary.csv`` and overlays); nothing is computed here.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import os
from pathlib import Path
from typing import Any

SECTIONS = (
    ("detector", "Stage 1: nasal bone detector (test split)"),
    ("classifier", "Stage 2: fracture classifier C (test split)"),
    ("localisation", "Stages 3-5: fracture-region localisation (test split fracture crops)"),
)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, name + " / ")
        elif isinstance(value, list) and len(value) > 12:
            continue  # curves and per-case lists belong in figures, not tables
        else:
            rows.append((name, value))
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(json.dumps(value) if isinstance(value, (list, dict)) else str(value))


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _img(path: Path, root: Path, width: int = 480) -> str:
    rel = html.escape(os.path.relpath(path, root))
    return f'<a href="{rel}"><img src="{rel}" width="{width}" title="{html.escape(path.name)}"></a>'


def _markdown_tables(folder: Path) -> str:
    out = ""
    for md in sorted(folder.glob("*.md")):
        out += f"<h3>{html.escape(md.name)}</h3><pre>{html.escape(md.read_text())}</pre>"
    return out


def _gallery(inference_dir: Path, root: Path, limit: int = 24) -> str:
    summary = inference_dir / "summary.csv"
    if not summary.is_file():
        return "<p>No inference run found.</p>"
    with open(summary, newline="") as f:
        rows = list(csv.DictReader(f))
    errors = [r for r in rows if r["status"] == "error"]
    ok = [r for r in rows if r["status"] == "ok"]
    flagged = [r for r in ok if r["fracture"] == "True"]
    parts = [
        f"<p>{len(rows)} images, {len(flagged)} flagged as fracture, {len(errors)} could not be processed. "
        f'Per-image JSON and maps: <a href="{html.escape(os.path.relpath(summary, root))}">summary.csv</a>.</p>'
    ]
    if errors:
        items = "".join(f"<li>{html.escape(Path(r['image']).name)}: {html.escape(r['error'])}</li>" for r in errors)
        parts.append(f"<ul>{items}</ul>")
    shown = (flagged[: limit // 2] + [r for r in ok if r not in flagged])[:limit]
    for r in shown:
        rec = json.loads((inference_dir / r["output"]).read_text())
        parts.append(
            f"<figure>{_img(inference_dir / rec['overlay'], root, 300)}"
            f"<figcaption>{html.escape(Path(r['image']).name)}</figcaption></figure>"
        )
    return "".join(parts)


def write_report(run_dir: str | Path, inference_dir: str | Path | None = None) -> Path:
    """Write ``run_dir/report.html`` from the run's results; return its path."""
    root = Path(run_dir)
    inference = Path(inference_dir) if inference_dir else root / "inference"
    parts = [
        "<!doctype html><meta charset='utf-8'><title>Nasal bone fracture: run report</title>",
        "<style>body{font-family:sans-serif;max-width:1400px;margin:auto}td{padding:2px 10px}"
        "tr:nth-child(even){background:#f2f2f2}figure{display:inline-block;margin:4px}"
        "figcaption{font-size:11px}</style>",
        "<h1>Nasal bone fracture detection: run report</h1>",
        "<p><b>Research use only.</b> Trained and measured on a procedural phantom, not on patients.</p>",
    ]
    pipeline = root / "pipeline.json"
    if pipeline.is_file():
        info = json.loads(pipeline.read_text())
        rows = [
            (name, s.get("status") or f"trained in {s.get('train_seconds')} s") for name, s in info["stages"].items()
        ]
        parts += [
            f"<h2>Pipeline ({html.escape(str(info.get('profile')))} profile)</h2>",
            _table(rows),
            f"<p>MLflow: <code>{html.escape(info.get('tracking_uri', ''))}</code>, parent run "
            f"<code>{html.escape(info.get('parent_run_id', ''))}</code>.</p>",
        ]
    for folder, title in SECTIONS:
        stage = root / folder
        if not stage.is_dir():
            continue
        parts.append(f"<h2>{html.escape(title)}</h2>")
        evaluation = stage / "evaluation.json"
        if evaluation.is_file():
            parts.append(_table(_flatten(json.loads(evaluation.read_text()))))
        parts.append(_markdown_tables(stage))
        parts += [_img(p, root) for p in sorted(stage.glob("*.png"))]
    parts += ["<h2>Inference on held-out images</h2>", _gallery(inference, root)]
    out = root / "report.html"
    out.write_text("\n".join(parts))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--inference_dir", default=None)
    args = parser.parse_args()
    print(write_report(args.run_dir, args.inference_dir))


if __name__ == "__main__":
    main()
