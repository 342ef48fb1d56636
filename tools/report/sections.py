"""The report's sections, in reading order: the one-screen summary, then each stage, the gallery, the details."""

from __future__ import annotations

import json
from pathlib import Path

from . import page
from .page import esc, fmt, fmt_ci, table
from .results import THESIS, Results, method_label, operating_points, read_csv, read_json

RULES = {"youden": "Youden's J"}  # threshold rules by name, as the classifier's export records them
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test", "all": "all"}
CAVEAT = (
    "<b>Phantom, not patients.</b> Every image is a procedural phantom (synthetic lateral head X-rays with drawn "
    "fractures, <code>tools/phantom</code>); training and test images come from the same generator. The figures "
    "show that the pipeline learns and how the methods compare on it; they do not measure how the models would do "
    "on patients' radiographs, and the thesis's figures (real X-rays) are beside them for orientation only. "
    "Research use only, not for diagnosis."
)


def _seeds_label(res: Results) -> str:
    seeds = (res.seeds or {}).get("seeds") or []
    return f"{len(seeds)} seeds" if seeds else "seeds"


def data_sentence(res: Results) -> str:
    """What was trained on what: dataset, images, patients, the split by patient."""
    splits, name = res.data.get("splits", {}), res.data.get("dataset") or "the dataset"
    if not splits:
        return "<p>No <code>split.csv</code> in the run folder.</p>"
    a = splits["all"]
    parts = ", ".join(f"{SPLIT_NAMES[k]} {v['images']:,} ({v['patients']:,})" for k, v in splits.items() if k != "all")
    return (
        f"<p><b>{a['images']:,} phantom X-rays of {a['patients']:,} patients</b> (<code>{esc(name)}</code>; "
        f"{a['fractures']:,} fracture, {a['normals']:,} normal), split by patient into images (patients): "
        f"{parts}.</p>"
    )


def run_sentence(res: Results) -> str:
    """Profile and time of the pipeline run."""
    info = res.pipeline or {}
    stages = info.get("stages", {})
    seconds = sum(float(s.get("train_seconds", 0)) + float(s.get("evaluate_seconds", 0)) for s in stages.values())
    trained = [k for k, s in stages.items() if "train_seconds" in s]
    skipped = [k for k, s in stages.items() if str(s.get("status", "")).startswith("skipped")]
    text = f"<b>{esc(info.get('profile', '?'))}</b> profile"
    if trained:
        text += f": {len(trained)} stages trained and evaluated in {seconds / 60:.0f} min on this machine"
    if skipped:
        text += f"; skipped (weights up to date): {esc(', '.join(skipped))}"
    return f"<p class='small muted'>{text}. Thesis: {esc(THESIS['data'])}.</p>"


def summary(res: Results, mlflow_ui: str) -> str:
    """The first screen: the data, each stage's headline figures beside the thesis's, what they mean; the MLflow UI
    command (``mlflow_ui``, HTML)."""
    groups = []
    if res.detector:
        groups.append(("Stage 1: nasal bone detector", res.detector["figures"], _detector_means(res)))
    if res.classifier:
        groups.append(("Stage 2: fracture classifier C", res.classifier["figures"], _classifier_means(res)))
    if res.localisation:
        figures = [f for _, p, _ in res.localisation["methods"] for f in (p,)]
        figures += [f for _, _, d in res.localisation["methods"] for f in (d,)]
        groups.append(("Stages 3-5: where the fracture is", figures, _localisation_means(res)))
    with_seeds = res.seeds is not None
    headers = ["Stage", "Figure (test split)", "This run", "95% CI", "n"]
    headers += [f"{_seeds_label(res)}: mean [min, max]"] if with_seeds else []
    headers += ["Thesis (real X-rays)", "What it means"]
    rows = []
    for title, figures, means in groups:
        n = len(figures)
        one_thesis = len({f.thesis for f in figures}) == 1  # one cell for the stage when all rows say the same
        for i, fig in enumerate(figures):
            row = [f"<td rowspan='{n}' class='stage'>{esc(title)}</td>"] if i == 0 else []
            row += [f"<td>{esc(fig.label)}</td>", page.value_cell(fig), page.ci_cell(fig)]
            row += [f"<td class='num'>{esc(fig.count)}</td>"]
            row += [page.seeds_cell(fig)] if with_seeds else []
            if i == 0 or not one_thesis:
                row += [f"<td class='thesis'{f' rowspan={n}' if one_thesis else ''}>{esc(fig.thesis)}</td>"]
            row += [f"<td rowspan='{n}' class='means'>{means}</td>"] if i == 0 else []
            rows.append(f"<tr class='{'first' if i == 0 else ''}'>{''.join(row)}</tr>")
    head = "".join(f"<th class='{'num' if 2 <= i <= 4 else ''}'>{h}</th>" for i, h in enumerate(headers))
    table_html = f"<table class='summary-table'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    top = (
        "<div class='grid top'>"
        f"<div class='card'><h2>Trained and tested on</h2>{data_sentence(res)}{run_sentence(res)}"
        f"<p class='small'>MLflow: {mlflow_ui}</p></div>"
        f"<div class='card caveat'>{CAVEAT}</div></div>"
    )
    return f"<section id='summary'>{top}<div class='card'>{table_html}</div></section>"


def _detector_means(res: Results) -> str:
    ev = res.detector["evaluation"]
    n = ev.get("images", 0)
    misses = round((1 - ev["contains_both_landmarks"]) * n)
    return (
        f"The box held both landmarks (nasion and nasal-bone tip) on {n - misses} of {n} test images, so the crop "
        "every later stage sees contains the nasal bone"
        + (f"; on {misses} it misses part of it." if misses else ".")
        + " IoU: overlap of the found box with the box drawn from the two landmarks (1 = the same box)."
    )


def _classifier_means(res: Results) -> str:
    ev = res.classifier["evaluation"]
    points = operating_points(ev)
    text = f"{esc(ev.get('confusion_text', ''))} at the main threshold."
    if points:
        label, t, names = points[-1]
        text = f"At the {esc(label)} point (p &ge; {t:.2f}): {esc(ev['operating_points'][names[0]]['confusion_text'])}."
        if len(points) == 1 and len(names) > 1:
            text += " Both operating points fell on the same threshold in this run."
        elif len(points) > 1:
            text += " Between the points the viewer says <i>suspicious</i>."
    if "calibration" in ev:
        text += (
            " ECE: mean gap between the predicted probability and the observed fracture rate (0 = a p of 0.8 means "
            "8 in 10 such images are fractured)."
        )
    return f"{text} {ev['n_images']} test images of {ev['n_patients']} patients."


def _localisation_means(res: Results) -> str:
    ev = res.localisation["evaluation"]
    n, tol = ev.get("test_crops"), ev.get("pointing_tolerance_px", 3)
    step2 = [(name, p) for name, p, _ in res.localisation["methods"] if name.startswith("gdc2") and p.value is not None]
    text = ""
    if step2 and n:
        name, p = step2[0]
        others = ", ".join(
            f"{esc(method_label(m))} {round(q.value * n)}"
            for m, q, _ in res.localisation["methods"]
            if m != name and q.value is not None
        )
        text = (
            f"{esc(method_label(name))}'s map peaked in the true fracture region (&plusmn;{tol} px) on "
            f"{round(p.value * n)} of {n} test fracture crops{f' ({others})' if others else ''}. "
        )
    return text + (
        "Pointing game: share of crops whose map maximum hits the region; Dice: overlap of the map's region with "
        "the truth (0-1). The thesis showed pictures only; the phantom's known regions make these numbers possible."
    )


# ----------------------------------------------------------------------------------------------
# Stage sections
# ----------------------------------------------------------------------------------------------


def data_section(res: Results) -> str:
    splits = res.data.get("splits", {})
    if not splits:
        return ""
    rows = [
        [SPLIT_NAMES[k], f"{v['images']:,}", f"{v['patients']:,}", f"{v['fractures']:,}", f"{v['normals']:,}"]
        for k, v in splits.items()
    ]
    return (
        "<section id='data'><h2>Data and split</h2><div class='card'>"
        + table(["Split", "Images", "Patients", "Fracture images", "Normal images"], rows)
        + "<p class='small muted'>From the run's <code>split.csv</code>: every image of a patient is in one split "
        "only, so no patient is both trained and tested on.</p></div></section>"
    )


def _by_format(by_format: dict, columns: list[tuple[str, str, str]]) -> str:
    rows = [
        [esc(name), *(fmt(v.get(key), kind) if kind else esc(v.get(key)) for _, key, kind in columns)]
        for name, v in by_format.items()
    ]
    return page.details("Per file format of the test images", table(["Format", *(c for c, _, _ in columns)], rows))


def detector_section(res: Results, curves: dict[str, tuple[bytes, str]], root: Path) -> str:
    if not res.detector:
        return ""
    ev = res.detector["evaluation"]
    rows = [
        ("Test images", esc(ev.get("images"))),
        ("Boxes holding both landmarks", fmt(ev.get("contains_both_landmarks"), "pct")),
        ("IoU with the true box: mean / median", f"{fmt(ev.get('mean_iou'), '2')} / {fmt(ev.get('median_iou'), '2')}"),
        (
            "IoU &ge; 0.5 / &ge; 0.75",
            f"{fmt(ev.get('iou_at_least_0.5'), 'pct')} / {fmt(ev.get('iou_at_least_0.75'), 'pct')}",
        ),
        ("mAP50 / mAP50-95", f"{fmt(ev.get('mAP50'), '3')} / {fmt(ev.get('mAP50_95'), '3')}"),
        ("Images without a box", esc(ev.get("failures"))),
        (
            "Confidence floor / mean confidence",
            f"{fmt(ev.get('conf_threshold'), '2')} / {fmt(ev.get('mean_confidence'), '2')}",
        ),
        ("Detector input / box margin", f"{esc(ev.get('imgsz'))} px / {fmt(ev.get('margin'), '2')}"),
        ("Time per image (CPU)", f"{fmt(ev.get('ms_per_image'), '0')} ms"),
    ]
    body = f"<div class='card'>{page.key_values(rows)}"
    if ev.get("by_format"):
        body += _by_format(
            ev["by_format"],
            [
                ("Images", "n_images", ""),
                ("Both landmarks", "hit_rate", "pct"),
                ("Mean IoU", "mean_iou", "2"),
                ("No box", "failures", ""),
            ],
        )
    body += "</div><div class='figs' style='margin-top:10px'>"
    grid = root / "detector" / f"predictions_{ev.get('split', 'test')}.png"
    if grid.is_file():
        body += page.figure(
            page.picture(grid, 900),
            "Test images: green = true box (from the two landmarks plus margin), red = "
            "detector's box; cyan cross = nasion, yellow = nasal-bone tip. Click for full size.",
            page.rel(grid, root),
            640,
        )
    body += _curves(curves, "detector") + "</div>"
    return f"<section id='detector'><h2>Stage 1: nasal bone detector</h2>{body}</section>"


def _curves(curves: dict[str, tuple[bytes, str]], stage: str) -> str:
    if stage not in curves:
        return ""
    png, caption = curves[stage]
    return page.figure(page.data_uri(png, "image/png"), esc(caption), width=page.png_width(png) + 14)


def classifier_section(res: Results, curves: dict[str, tuple[bytes, str]], root: Path) -> str:
    if not res.classifier:
        return ""
    ev, m = res.classifier["evaluation"], res.classifier["evaluation"]["metrics"]
    rows = [
        [esc(label), fmt(m[k]["value"], kind), f"<span class='ci'>{fmt_ci(_pair(m[k]), kind)}</span>"]
        for k, label, kind in (
            ("roc_auc", "ROC AUC", "3"),
            ("accuracy", "Accuracy", "pct"),
            ("sensitivity", "Sensitivity", "pct"),
            ("specificity", "Specificity", "pct"),
            ("brier", "Brier score (lower is better)", "3"),
        )
        if k in m
    ]
    rule = RULES.get(ev.get("threshold_rule"), ev.get("threshold_rule"))
    main = (
        f"<h3>At the main threshold p &ge; {ev['threshold']:.3f} ({esc(rule)} on the "
        f"{esc(ev.get('threshold_chosen_on', 'validation'))} split)</h3>"
        + table(["Figure", "Value", "95% CI"], rows)
        + f"<p class='small'>{esc(ev.get('confusion_text', ''))}; {ev['n_images']} test images of "
        f"{ev['n_patients']} patients ({ev['n_fractures']} fracture). Intervals: patient bootstrap, "
        f"{esc(ev.get('bootstrap', {}).get('n_resamples', '?'))} resamples.</p>"
    )
    body = f"<div class='card'>{main}{_points_table(ev)}{_findings_table(ev)}{_calibration_table(ev)}"
    if ev.get("by_format"):
        body += _by_format(
            ev["by_format"],
            [
                ("Images", "n_images", ""),
                ("Fractures", "n_fractures", ""),
                ("ROC AUC", "roc_auc", "3"),
                ("Accuracy", "accuracy", "pct"),
                ("Sensitivity", "sensitivity", "pct"),
                ("Specificity", "specificity", "pct"),
            ],
        )
    body += "</div><div class='figs' style='margin-top:10px'>"
    figs = ev.get("figures", {})
    for key, caption in (
        ("roc", "ROC curve of the test split with the main threshold and both operating points marked."),
        (
            "calibration",
            "Reliability diagram: observed fracture rate against predicted probability per bin "
            "(numbers: images per bin), before (dashed) and after calibration; scores below.",
        ),
    ):
        path = root / "classifier" / figs.get(key, f"evaluation_{key}.png")
        if path.is_file():
            body += page.figure(page.picture(path), caption, page.rel(path, root), 460)
    body += _curves(curves, "classifier") + "</div>"
    return f"<section id='classifier'><h2>Stage 2: fracture classifier C</h2>{body}</section>"


def _pair(d: dict) -> tuple[float, float] | None:
    return (d["ci_low"], d["ci_high"]) if d.get("ci_low") is not None else None


def _points_table(ev: dict) -> str:
    points = ev.get("operating_points") or {}
    if not points:
        return ""
    targets = ev.get("validation_operating_points") or {}
    rows = []
    for name, p in points.items():
        target = targets.get(name, {}).get("target", {})
        goal = ", ".join(f"{k} &ge; {fmt(v, 'pct')}" for k, v in target.items())
        rows.append(
            [
                esc(name),
                f"{p['threshold']:.3f}",
                goal or "-",
                page.with_ci(p["sensitivity"]["value"], _pair(p["sensitivity"]), "pct"),
                page.with_ci(p["specificity"]["value"], _pair(p["specificity"]), "pct"),
                esc(p.get("confusion_text", "")),
            ]
        )
    return "<h3>Operating points (chosen on the validation split)</h3>" + table(
        [
            "Point",
            "Threshold p",
            "Validation target",
            "Test sensitivity [95% CI]",
            "Test specificity [95% CI]",
            "Test images",
        ],
        rows,
        numeric_from=1,
    )


def _findings_table(ev: dict) -> str:
    findings = ev.get("findings") or {}
    if not findings:
        return ""
    rows = [[esc(k), str(v.get("fractures", 0)), str(v.get("normals", 0))] for k, v in findings.items()]
    return "<h3>What the viewer would say on the test images</h3>" + table(
        ["Finding", "Fracture images", "Normal images"], rows
    )


def _calibration_table(ev: dict) -> str:
    cal, before = ev.get("calibration"), ev.get("calibration_before")
    if not cal:
        return ""
    rows = []
    if before:
        rows.append(["before calibration", fmt(before.get("brier"), "3"), fmt(before.get("ece"), "3")])
    rows.append(
        ["after calibration" if before else "probability", fmt(cal.get("brier"), "3"), fmt(cal.get("ece"), "3")]
    )
    t = ev.get("temperature")
    note = f"Temperature scaling, T = {t:.2f} (fitted on validation). " if t else ""
    return (
        "<h3>Calibration (test split)</h3>"
        + table(["", "Brier score", f"ECE ({cal.get('n_bins', 10)} bins)"], rows)
        + f"<p class='small muted'>{note}Lower is better.</p>"
    )


def localisation_section(res: Results, curves: dict[str, tuple[bytes, str]], root: Path) -> str:
    if not res.localisation:
        return ""
    ev = res.localisation["evaluation"]
    body = "<div class='card'>"
    if ev.get("methods"):
        rows = []
        for name, r in sorted(ev["methods"].items(), key=lambda kv: _order(kv[0])):
            rows.append(
                [f"{esc(method_label(name))} <span class='ci'>{esc(name)}</span>"]
                + [
                    f"{fmt(r.get(k), kind)} <span class='ci'>{fmt_ci(r.get(f'{k}_ci95'), kind)}</span>"
                    for k, kind in (("pointing", "pct"), ("dice", "2"), ("iou", "2"), ("energy", "pct"))
                ]
                + [fmt(r.get("threshold"), "2")]
            )
        body += (
            f"<p>{ev.get('test_crops')} test fracture crops ({ev.get('val_crops')} validation crops chose each "
            f"map's threshold); pointing tolerance {ev.get('pointing_tolerance_px')} px; 95% bootstrap intervals "
            "over crops.</p>"
            + table(["Map", "Pointing game", "Dice", "IoU", "Energy in region", "Threshold"], rows)
            + "<p class='small muted'>Step 1 and step 2 maps: |G(X) - X|, smoothed; Grad-CAM and occlusion: C's own "
            "saliency, the baselines. (intent) and (literal): the two readings of the thesis's Adjust formula (mask "
            "polarity, SPEC.md). Energy in region: share of the map's mass inside the true region. Threshold: the "
            "map level that gave the best Dice on the validation crops.</p>"
        )
    if ev.get("repaired"):
        rows = [
            [
                esc(method_label(k)),
                fmt(r["c_prob_original"], "3"),
                fmt(r["c_prob_repaired"], "3"),
                fmt(r["d_prob_original"], "3"),
                fmt(r["d_prob_repaired"], "3"),
                fmt(r["mean_abs_change"], "4"),
            ]
            for k, r in ev["repaired"].items()
        ]
        body += (
            "<h3>The repaired crops (step 2's output)</h3>"
            + table(
                [
                    "Generator",
                    "C: fracture p, original",
                    "C: fracture p, repaired",
                    "D: real p, original",
                    "D: real p, repaired",
                    "Mean |change| (0-1 scale)",
                ],
                rows,
            )
            + (
                "<p class='small muted'>Means over the test fracture crops. A repair C calls normal has a low "
                "fracture p; D near 0.5 on both means D cannot tell them apart (or has not learnt).</p>"
            )
        )
    if res.seeds:
        body += seeds_table(res.seeds)
    body += "</div><div class='figs' style='margin-top:10px'>"
    cases = root / "localisation" / "cases.png"
    if cases.is_file():
        body += page.figure(
            page.picture(cases, 1100),
            "Test fracture crops, one per row: the input, the true region (green "
            "outline), the repaired crop (step 2) and each method's map. Click for full size.",
            page.rel(cases, root),
            900,
        )
    for stage in ("gd", "gdc1", "gdc2"):
        body += _curves(curves, stage)
    body += "</div>"
    return f"<section id='localisation'><h2>Stages 3-5: G-D, G-D-C step 1 and step 2, localisation</h2>{body}</section>"


def _order(name: str) -> tuple[int, str]:
    from .results import method_order

    return method_order(name)


SEED_GROUPS = ("classifier", "localisation", "repaired", "discriminator")  # the seed table's row order
METRIC_KINDS = {"pointing": "pct", "dice": "2", "iou": "2", "energy": "pct"}


def _seed_row_order(key: str) -> tuple:
    parts = key.split("/")
    group = SEED_GROUPS.index(parts[0]) if parts[0] in SEED_GROUPS else len(SEED_GROUPS)
    metric = list(METRIC_KINDS).index(parts[-1]) if parts[-1] in METRIC_KINDS else len(METRIC_KINDS)
    return (group, metric, _order(parts[1]) if len(parts) >= 3 else (0, ""), key)


def seeds_table(seeds: dict) -> str:
    """Every figure of the seed table: mean [min, max] per configuration (columns) and figure (rows); figure names
    ``<group>/<method>/<metric>`` (any method) or ``<group>/<metric>``."""
    summary = seeds.get("summary") or {}
    configs = list(summary)
    rows = []
    for key in sorted({k for c in configs for k in summary[c]}, key=_seed_row_order):
        parts = key.split("/")
        kind = METRIC_KINDS.get(parts[-1], "3")
        label = f"{esc(parts[0])}: {esc(' / '.join(parts[1:]))}" if len(parts) == 2 else esc(key)
        if len(parts) >= 3:
            label = f"{esc(parts[0])}: {esc(method_label(parts[1]))}, {esc(parts[-1])}"
        cells = []
        for c in configs:
            s = summary[c].get(key)
            ok = s and s.get("mean") is not None
            cells.append(
                page.with_ci(s["mean"], (s["min"], s["max"]), kind) + f" <span class='ci'>n={s.get('n')}</span>"
                if ok
                else "-"
            )
        rows.append([f"{label} <span class='ci'>{esc(key)}</span>", *cells])
    variants = seeds.get("variants") or {}
    changes = "; ".join(
        f"<b>{esc(k)}</b>: {esc(', '.join(f'{a}={b}' for a, b in v.items()))}" for k, v in variants.items() if v
    )
    n = len(seeds.get("seeds") or [])
    return (
        f"<h3>Over {n} seeds ({esc(', '.join(map(str, seeds.get('seeds') or [])))}): mean [min, max]</h3>"
        + table(["Figure", *(esc(c) for c in configs)], rows)
        + "<p class='small muted'>Each configuration retrained with each seed on the same split and detector "
        "(<code>tools/seeds.py</code>); n: seeds with that figure."
        + (f" Configurations: {changes}." if changes else "")
        + (f" Command: <code>{esc(seeds['command'])}</code>." if seeds.get("command") else "")
        + "</p>"
    )


# ----------------------------------------------------------------------------------------------
# Inference gallery
# ----------------------------------------------------------------------------------------------

GROUPS = (  # (key, heading), failures and "not assessable" first
    ("not assessable", "Not assessable (no nasal bone found, or not a head X-ray)"),
    ("missed", "Missed fractures (no fracture called on a fracture image)"),
    ("false alarm", "False alarms (fracture called on a normal image)"),
    ("suspicious", "Suspicious (between the two operating points)"),
    ("fracture", "Fracture, correctly called"),
    ("no fracture", "No fracture, correctly called"),
    ("other", "Other"),
)


def _group(finding: str, truth: str | None) -> str:
    if finding in ("not assessable", "suspicious"):
        return finding
    if truth == "1" and finding == "no fracture":
        return "missed"
    if truth == "0" and finding == "fracture":
        return "false alarm"
    return finding if finding in ("fracture", "no fracture") else "other"


def gallery_section(inference: Path, root: Path, limit_correct: int = 8) -> str:
    rows = read_csv(inference / "summary.csv")
    if not rows:
        return "<section id='inference'><h2>Inference</h2><p>No inference run found.</p></section>"
    truth = {Path(r["image"]).name: r["label"] for r in read_csv(root / "split.csv")}
    errors = [r for r in rows if r["status"] != "ok"]
    groups: dict[str, list[dict]] = {k: [] for k, _ in GROUPS}
    for r in rows:
        if r["status"] == "ok":
            groups[_group(r["finding"], truth.get(Path(r["image"]).name))].append(r)
    counts = [
        [
            f"<span class='badge {_cls(k)}'>{esc(k)}</span>",
            str(len(v)),
            str(sum(truth.get(Path(r["image"]).name) == "1" for r in v)),
            str(sum(truth.get(Path(r["image"]).name) == "0" for r in v)),
        ]
        for k, v in groups.items()
        if v
    ]
    counts.append(["<span class='badge error'>could not be read</span>", str(len(errors)), "", ""])
    body = (
        f"<p>{len(rows)} files of <code>{esc(page.rel(inference, root))}/</code> "
        f"(<a href='{page.rel(inference / 'summary.csv', root)}'>summary.csv</a>; per image: JSON, region, heatmap, "
        "overlay and, when asked, DICOM SC and SR). Truth from the run's split.</p>"
        + table(["Outcome", "Images", "Fracture images", "Normal images"], counts)
    )
    if errors:
        body += "<h3>Could not be read</h3>" + table(
            ["File", "Error"], [[esc(r["image"]), esc(r["error"])] for r in errors], numeric_from=9
        )
    for key, heading in GROUPS:
        items = groups[key] if key not in ("fracture", "no fracture") else groups[key][:limit_correct]
        if not items:
            continue
        shown = f" (first {len(items)} of {len(groups[key])})" if len(items) < len(groups[key]) else ""
        cards = "".join(_thumb(inference, root, r, truth.get(Path(r["image"]).name)) for r in items)
        body += f"<h3>{esc(heading)}{shown}</h3><div class='gallery'>{cards}</div>"
    return f"<section id='inference'><h2>Inference on the held-out images</h2>{body}</section>"


def _cls(finding: str) -> str:
    return (
        finding.replace(" ", "-")
        if finding in ("fracture", "suspicious", "no fracture", "missed", "false alarm")
        else ""
    )


def _thumb(inference: Path, root: Path, row: dict, truth: str | None) -> str:
    record = read_json(inference / row["output"]) or {}
    overlay = inference / str(record.get("overlay", ""))
    p = row.get("fracture_probability")
    text = (
        f"<b>{esc(Path(row['image']).name)}</b><br><span class='badge {_cls(row['finding'])}'>{esc(row['finding'])}"
        f"</span> {'p ' + fmt(float(p), '2') if p else ''} &middot; truth: "
        f"{ {'1': 'fracture', '0': 'normal'}.get(truth or '', 'unknown') }"
    )
    if record.get("finding_reason"):
        text += f"<br>{esc(record['finding_reason'])}"
    if not record.get("overlay") or not overlay.is_file():
        return f"<figure><figcaption>{text}</figcaption></figure>"
    return page.figure(page.overlay_tile(overlay, record.get("nasal_bone_box")), text, page.rel(overlay, root))


# ----------------------------------------------------------------------------------------------
# Details
# ----------------------------------------------------------------------------------------------

SHARED_CONFIG = ("seed", "split_seed", "split_fractions", "box_margin", "crop_size", "crop_source")


def details_section(res: Results, root: Path, mlflow_lines: list[str]) -> str:
    info = res.pipeline or {}
    rows = []
    for name, s in info.get("stages", {}).items():
        rows.append(
            [
                esc(name),
                esc(s.get("status", "trained")),
                fmt(s["train_seconds"] / 60, "1") if "train_seconds" in s else "-",
                fmt(s.get("evaluate_seconds"), "0") if "evaluate_seconds" in s else "-",
                f"<code>{esc(s.get('run_id', ''))}</code>",
                esc(s.get("reason", "")),
            ]
        )
    body = table(["Stage", "Status", "Training (min)", "Evaluation (s)", "MLflow run", "Why it ran"], rows, "stages", 2)
    body += "<h3>MLflow</h3>" + "".join(f"<p>{line}</p>" for line in mlflow_lines)
    configs = ""
    for stage in ("detector", "classifier", "gd", "gdc1", "gdc2"):
        config = read_json(root / stage / "config.json")
        if not config:
            continue
        kv = [(k, config[k]) for k in SHARED_CONFIG if k in config]
        kv += page.flatten({stage: config.get(stage, {})})
        if stage.startswith("gd"):
            kv += page.flatten({"gan": config.get("gan", {})})
        configs += page.details(esc(stage), page.key_values_grid([(esc(k), esc(json.dumps(v))) for k, v in kv]))
    body += "<h3>Configuration (each stage's executed config.json, its own section)</h3>" + configs
    raw = ""
    for path in (
        "pipeline.json",
        "detector/evaluation.json",
        "classifier/evaluation.json",
        "localisation/localisation.json",
    ):
        doc = read_json(root / path)
        if doc:
            raw += page.details(f"<code>{esc(path)}</code>", f"<pre>{esc(json.dumps(doc, indent=1))}</pre>")
    body += "<h3>Raw results (absolute paths cut)</h3>" + raw
    return (
        f"<section id='details'>"
        f"{page.details('Run details: stages, MLflow, configuration, raw results', f'<div class=card>{body}</div>')}"
        "</section>"
    )
