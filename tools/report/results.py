"""The figures of a run, read from the files its stages wrote: the split, each stage's evaluation and the seed table.

Each headline number is a ``Figure`` that remembers the JSON file and the JSON pointer it came from, so the page can
say (and the browser test check) where every value comes from. The only numbers computed here are the detector's
95% intervals: a patient bootstrap over ``detector/evaluation_per_image_test.csv``, as the classifier's are.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The thesis's figures (SPEC.md), on 2,312 real X-rays of 1,156 patients; None: the thesis gives no number.
THESIS = {
    "data": "2,312 lateral head X-rays of 1,156 patients (844 fracture), two hospitals; split 8:1:1",
    "roc_auc": "0.99 (SD 0.003)",
    "accuracy": "95%",
    "sensitivity": "89.3% (75/84)",
    "specificity": "96.4% (81/84)",
}
METHOD_NAMES = {"gdc2": "G-D-C step 2", "gdc1": "G-D-C step 1", "gradcam": "Grad-CAM", "occlusion": "Occlusion"}


@dataclass
class Figure:
    """One number of the page: its value, 95% interval, where it came from and the thesis's figure beside it."""

    label: str
    value: float | None
    kind: str = "3"  # "pct": a proportion shown in %; "2", "3": decimals
    ci: tuple[float, float] | None = None
    source: str = ""  # the JSON file, relative to the run folder ("seeds" for the seed table)
    pointer: str = ""  # JSON pointer of the value in ``source``
    count: str = ""  # e.g. "37/38"
    thesis: str = ""
    seeds: dict | None = None  # {"mean", "min", "max", "n"} over seeds
    seeds_pointer: str = ""
    note: str = ""


@dataclass
class Results:
    """Everything the page shows, stage by stage; a missing stage is None."""

    run: Path
    data: dict = field(default_factory=dict)
    detector: dict | None = None
    classifier: dict | None = None
    localisation: dict | None = None
    pipeline: dict | None = None
    seeds: dict | None = None


def pointer(*keys: str) -> str:
    """A JSON pointer (RFC 6901) to ``keys``."""
    return "".join("/" + str(k).replace("~", "~0").replace("/", "~1") for k in keys)


def resolve(doc: Any, ptr: str) -> Any:
    """The value at JSON pointer ``ptr`` in ``doc``."""
    for part in ptr.split("/")[1:]:
        doc = doc[part.replace("~1", "/").replace("~0", "~")]
    return doc


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def split_counts(rows: list[dict[str, str]]) -> dict[str, dict[str, int]]:
    """Images, patients, fractures and normals per split (and ``all``) of ``split.csv``'s rows."""
    out: dict[str, dict[str, int]] = {}
    for name in ("train", "val", "test", "all"):
        part = [r for r in rows if name == "all" or r["split"] == name]
        if part:
            fractures = sum(r["label"] == "1" for r in part)
            out[name] = {
                "images": len(part),
                "patients": len({r["patient_id"] for r in part}),
                "fractures": fractures,
                "normals": len(part) - fractures,
            }
    return out


def patient_ci(values: np.ndarray, patients: list[str], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values``, resampling patients (``scripts.evaluation``'s resampler)."""
    from scripts.evaluation import patient_bootstrap_indices

    means = [values[idx].mean() for idx in patient_bootstrap_indices(patients, n, seed)]
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def detector_figures(run: Path, evaluation: dict, patient_of: dict[str, str]) -> list[Figure]:
    """Boxes holding both landmarks and IoU, with patient-bootstrap intervals from the per-image table."""
    rows = read_csv(run / "detector" / f"evaluation_per_image_{evaluation.get('split', 'test')}.csv")
    hit_ci = iou_ci = None
    n = evaluation.get("images", len(rows))
    if rows and all(r["image"] in patient_of for r in rows):
        patients = [patient_of[r["image"]] for r in rows]
        hit_ci = patient_ci(np.array([float(r["contains_both"]) for r in rows]), patients)
        iou_ci = patient_ci(np.array([float(r["iou"]) for r in rows]), patients)
    src = "detector/evaluation.json"
    hits = round(evaluation["contains_both_landmarks"] * n)
    return [
        Figure(
            "Boxes holding both landmarks",
            evaluation["contains_both_landmarks"],
            "pct",
            hit_ci,
            src,
            pointer("contains_both_landmarks"),
            f"{hits}/{n}",
            "not reported",
        ),
        Figure(
            "IoU with the true box, mean",
            evaluation["mean_iou"],
            "2",
            iou_ci,
            src,
            pointer("mean_iou"),
            "",
            "not reported",
        ),
    ]


def _ci(d: dict) -> tuple[float, float] | None:
    low, high = d.get("ci_low"), d.get("ci_high")
    return None if low is None or high is None or low != low else (float(low), float(high))


def _counts(confusion: dict, positive: bool) -> str:
    return (
        f"{confusion['tp']}/{confusion['tp'] + confusion['fn']}"
        if positive
        else (f"{confusion['tn']}/{confusion['tn'] + confusion['fp']}")
    )


def operating_points(evaluation: dict) -> list[tuple[str, float, list[str]]]:
    """(label, threshold, names) of each distinct operating point, points at the same threshold merged."""
    points = evaluation.get("operating_points") or {}
    merged: list[tuple[float, list[str]]] = []
    for name, p in points.items():
        same = next((m for m in merged if abs(m[0] - p["threshold"]) < 1e-9), None)
        if same:
            same[1].append(name)
        else:
            merged.append((p["threshold"], [name]))
    return [(" = ".join(names), t, names) for t, names in merged]


def classifier_figures(evaluation: dict) -> list[Figure]:
    """ROC AUC, accuracy at the main threshold, sensitivity and specificity at each operating point, calibration."""
    src, m = "classifier/evaluation.json", evaluation["metrics"]
    main = evaluation["threshold"]
    out = [
        Figure(
            "ROC AUC",
            m["roc_auc"]["value"],
            "3",
            _ci(m["roc_auc"]),
            src,
            pointer("metrics", "roc_auc", "value"),
            thesis=THESIS["roc_auc"],
        ),
        Figure(
            f"Accuracy at p \u2265 {main:.2f} (main threshold)",
            m["accuracy"]["value"],
            "pct",
            _ci(m["accuracy"]),
            src,
            pointer("metrics", "accuracy", "value"),
            f"{evaluation['confusion']['tp'] + evaluation['confusion']['tn']}/{evaluation['n_images']}",
            THESIS["accuracy"],
        ),
    ]
    points = operating_points(evaluation)
    if not points:  # weights without operating points: the main threshold's figures
        for key in ("sensitivity", "specificity"):
            out.append(
                Figure(
                    f"{key.capitalize()}, main threshold",
                    m[key]["value"],
                    "pct",
                    _ci(m[key]),
                    src,
                    pointer("metrics", key, "value"),
                    _counts(evaluation["confusion"], key == "sensitivity"),
                    THESIS[key],
                )
            )
    for label, t, names in points:
        p = evaluation["operating_points"][names[0]]
        for key in ("sensitivity", "specificity"):
            out.append(
                Figure(
                    f"{key.capitalize()} at p \u2265 {t:.2f} ({label})",
                    p[key]["value"],
                    "pct",
                    _ci(p[key]),
                    src,
                    pointer("operating_points", names[0], key, "value"),
                    _counts(p["confusion"], key == "sensitivity"),
                    THESIS[key] + ", one threshold",
                )
            )
    cal = evaluation.get("calibration")
    if cal:
        before = evaluation.get("calibration_before", {}).get("ece")
        out.append(
            Figure(
                "Calibration error, ECE" + (f" ({before:.3f} before calibration)" if before is not None else ""),
                cal["ece"],
                "3",
                None,
                src,
                pointer("calibration", "ece"),
                thesis="not reported",
            )
        )
    return out


def method_order(name: str) -> tuple[int, str]:
    """Step 2 first, then step 1, Grad-CAM, occlusion, then any other method by name."""
    base = name.split("[")[0]
    order = list(METHOD_NAMES)
    return (order.index(base) if base in order else len(order), name)


def method_label(name: str) -> str:
    """``gdc2[intent]`` -> ``G-D-C step 2 (intent)``; unknown names unchanged."""
    base, _, rest = name.partition("[")
    label = METHOD_NAMES.get(base, base)
    return f"{label} ({rest.rstrip(']')})" if rest else label


def localisation_figures(evaluation: dict, seeds: dict | None) -> list[tuple[str, Figure, Figure]]:
    """Per method of the run (else of the seed table): (name, pointing game, Dice)."""
    src, methods = "localisation/localisation.json", evaluation.get("methods", {})
    names = set(methods) or set(seed_methods(seeds))  # the seed table's other variants: in its own table
    # the maps as shipped; the rows comparing a step's map modes ("gdc2[intent] removed", ...) stay in the
    # localisation section's full table
    names = {name for name in names if " " not in name}
    out = []
    for name in sorted(names, key=method_order):
        r = methods.get(name, {})
        row = []
        for key, kind in (("pointing", "pct"), ("dice", "2")):
            ci = r.get(f"{key}_ci95")
            fig = Figure(
                f"{'Pointing game' if key == 'pointing' else 'Dice'}, {method_label(name)}",
                r.get(key),
                kind,
                tuple(ci) if ci else None,
                src if r else "",
                pointer("methods", name, key) if r else "",
                hits(r.get(key), evaluation.get("test_crops")) if key == "pointing" else "",
                thesis="pictures only",
            )
            add_seeds(fig, seeds, f"localisation/{name}/{key}")
            row.append(fig)
        out.append((name, row[0], row[1]))
    return out


def hits(share: float | None, n: int | None) -> str:
    """``23/38`` from a share of ``n``."""
    return f"{round(share * n)}/{n}" if share is not None and n else ""


def seed_config(seeds: dict | None) -> str | None:
    """The seed table's main configuration (``main``, else its first)."""
    summary = (seeds or {}).get("summary") or {}
    return "main" if "main" in summary else next(iter(summary), None)


def seed_methods(seeds: dict | None) -> list[str]:
    """The localisation methods of the seed table's main configuration."""
    config = seed_config(seeds)
    keys = seeds["summary"][config] if config else {}
    return [k.split("/", 1)[1].rsplit("/", 1)[0] for k in keys if k.startswith("localisation/") and k.count("/") >= 2]


def add_seeds(fig: Figure, seeds: dict | None, key: str) -> None:
    """Attach the main configuration's mean [min, max] of ``key`` over seeds to ``fig``."""
    config = seed_config(seeds)
    stats = seeds["summary"][config].get(key) if config else None
    if stats and stats.get("mean") is not None:
        fig.seeds, fig.seeds_pointer = stats, pointer("summary", config, key)


def load(run_dir: str | Path, seeds_path: str | Path | None = None) -> Results:
    """Read every result of the run folder ``run_dir`` (and the seed table, if given)."""
    run = Path(run_dir)
    split_rows = read_csv(run / "split.csv")
    res = Results(run=run, pipeline=read_json(run / "pipeline.json"))
    res.seeds = read_json(Path(seeds_path)) if seeds_path else None
    res.data = {"splits": split_counts(split_rows), "dataset": dataset_name(run)}
    patient_of = {r["image"]: r["patient_id"] for r in split_rows}
    detector = read_json(run / "detector" / "evaluation.json")
    if detector:
        res.detector = {"evaluation": detector, "figures": detector_figures(run, detector, patient_of)}
    classifier = read_json(run / "classifier" / "evaluation.json")
    if classifier:
        figures = classifier_figures(classifier)
        add_seeds(figures[0], res.seeds, "classifier/roc_auc")
        res.classifier = {"evaluation": classifier, "figures": figures}
    localisation = read_json(run / "localisation" / "localisation.json")
    if localisation or seed_methods(res.seeds):
        localisation = localisation or {}
        res.localisation = {"evaluation": localisation, "methods": localisation_figures(localisation, res.seeds)}
    return res


def dataset_name(run: Path) -> str:
    """The dataset folder's name (never its path), from a stage's executed config."""
    for stage in ("detector", "classifier", "gd"):
        config = read_json(run / stage / "config.json")
        if config and config.get("dataset_dir"):
            return Path(str(config["dataset_dir"])).name
    return ""
