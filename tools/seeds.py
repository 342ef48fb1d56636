"""``make seeds``: every figure over several training seeds (mean, minimum, maximum), on one split and one detector.

    python -m tools.seeds --data data/phantom --out runs/seeds --seeds 0 1 2 --profile quick \\
        [--detector PATH] [--variant NAME KEY=VALUE ...] [--variants-only | --collect-only]

What it runs, one training at a time, each the bundle's chained training (``python -m monai.bundle run training``):

- ``OUT/shared``: the detector, trained once (seed 0, ``only: detector``) or copied from ``--detector``; the split
  (``split.csv``, copied into every run folder) and the crop cache every run reads (``crops_csv#out_dir``), built
  here once so that no run's random numbers depend on whether it had to build the crops (loading the detector
  draws from torch's generator);
- ``OUT/seed{s}``: C, G-D, G-D-C steps 1 and 2 with ``seed: s`` (``only: [classifier, gd, gdc1, gdc2]``), evaluated;
  ``models/`` holds the shared detector and this seed's weights;
- ``OUT/seed{s}-{name}`` for each ``--variant name key=value ...`` (an ablation): G-D-C steps 1 and 2 again with
  ``seed: s`` and the overrides (``only: [gdc1, gdc2]``), beside copies of seed s's detector, C and G-D.

The runs' fingerprints skip stages whose weights are current, so the same command continues an interrupted run.
Then every figure of every run (C's test ROC AUC; each localisation method's pointing game, Dice, IoU and energy; the
repaired crops' C and D scores; ``gd/discriminator.json`` when there is one) goes to ``OUT/seeds.json`` (per run
and summarised) and ``OUT/seeds.md``; ``--collect-only`` rebuilds these two from the run folders.
``--variants-only`` trains only the variants, beside seed runs already in ``OUT`` (an ablation added to a finished
table: the seed runs are not looked at again, so a config key added since does not retrain them).
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from . import BUNDLE_ROOT
from .demo import bundle_pythonpath

TRAIN_CONFIG = BUNDLE_ROOT / "configs" / "train.yaml"
SEED_STAGES = ["classifier", "gd", "gdc1", "gdc2"]
VARIANT_STAGES = ["gdc1", "gdc2"]
VARIANT_COPIES = ("detector", "classifier", "gd")  # weights a variant takes from its seed's run, never retrains
WEIGHT_SUFFIXES = (".pt", ".json", ".fingerprint.json")  # a weights file and its sidecars
LOCALISATION_KEYS = ("pointing", "dice", "iou", "energy")
REPAIRED_KEYS = ("c_prob_original", "c_prob_repaired", "d_prob_original", "d_prob_repaired")
MAIN = "main"
# (title, pattern of the figure names in it), in the table's order; a figure no group matches goes under "Other"
GROUPS = (
    ("Classifier C (test split)", r"classifier/.*"),
    ("Localisation: pointing game", r"localisation/.*/pointing"),
    ("Localisation: Dice", r"localisation/.*/dice"),
    ("Localisation: IoU", r"localisation/.*/iou"),
    ("Localisation: energy in the region", r"localisation/.*/energy"),
    ("Repaired crops (G-D-C step 2): mean C fracture and D real probabilities", r"repaired/.*"),
    ("D of G-D (gd/discriminator.json)", r"discriminator/.*"),
)


def log(t0: float, message: str) -> None:
    """One progress line with the seconds since ``t0``."""
    print(f"[{time.perf_counter() - t0:7.0f} s] {message}", flush=True)


def run_step(cmd: list[str]) -> None:
    """Run one command (a training or the crop cache) in the bundle's environment; stop on failure."""
    print(f"$ {shlex.join(cmd)}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": bundle_pythonpath()}
    subprocess.run(cmd, check=True, env=env)


def training_command(data: Path, out: Path, profile: str, only: list[str], stage_args: dict) -> list[str]:
    """The chained training of ``only`` into ``out`` (weights in ``out/models``) with ``stage_args``."""
    return [
        *(sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(TRAIN_CONFIG)),
        *("--dataset_dir", str(data), "--output_dir", str(out), "--models_dir", str(out / "models")),
        *("--profile", profile, "--only", repr(only), "--stage_args", repr(stage_args)),
    ]


def crops_command(data: Path, shared: Path, profile: str, crops_dir: Path) -> list[str]:
    """The crop cache (``crops_csv`` of common.yaml) from the shared detector, the split made on the way."""
    from scripts.pipeline import profile_file

    files = [str(BUNDLE_ROOT / "configs" / "common.yaml"), str(profile_file(profile))]
    return [
        *(sys.executable, "-m", "monai.bundle", "run", "crops_csv", "--config_file", repr(files)),
        *("--dataset_dir", str(data), "--output_dir", str(shared), "--models_dir", str(shared / "models")),
        *("--crops_csv#out_dir", str(crops_dir)),
    ]


def _copy(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` if it exists and differs (an identical file is left alone)."""
    if source.is_file() and not (target.is_file() and filecmp.cmp(source, target, shallow=False)):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def copy_weights(src: Path, dst_dir: Path, stem: str) -> None:
    """Copy weights ``src`` (``x.pt``) and its sidecars (``x.json``, ``x.fingerprint.json``) as ``stem.*`` into
    ``dst_dir``."""
    base = src.name[: -len(".pt")] if src.name.endswith(".pt") else src.stem
    for suffix in WEIGHT_SUFFIXES:
        _copy(src.with_name(base + suffix), dst_dir / f"{stem}{suffix}")
    if not (dst_dir / f"{stem}.pt").is_file():
        raise FileNotFoundError(f"no weights at {src}")


def copy_split(shared: Path, run: Path) -> None:
    """The shared split (``split.csv`` and its fingerprint) into a run folder: the run trains on it, and the folder
    is a complete run for ``tools.report``."""
    for name in ("split.csv", "split.fingerprint.json"):
        _copy(shared / name, run / name)


# config sections a variant does not retrain (it copies the seed's weights of these stages)
UPSTREAM_SECTIONS = ("detector", "classifier", "gd", "seed", "split_seed", "split_fractions", "crop_size", "box_margin")


def parse_variant(tokens: list[str]) -> tuple[str, dict[str, Any]]:
    """``["no_d", "gan#gdc_d_weight=0"]`` -> ``("no_d", {"gan#gdc_d_weight": 0})`` (values read as YAML)."""
    name, *pairs = tokens
    if not re.fullmatch(r"[A-Za-z0-9_.]+", name) or name == MAIN:
        raise ValueError(f"variant name '{name}': letters, digits, '_' and '.' only, and not '{MAIN}'")
    if not pairs or any("=" not in p for p in pairs):
        raise ValueError(f"variant '{name}': give its overrides as KEY=VALUE, e.g. gan#gdc_d_weight=0")
    return name, {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}


def check_overrides(overrides: dict[str, Any], profile: str) -> None:
    """Refuse a key that is not in G-D-C step 2's merged config (a typo would silently add a new, unused key)."""
    from monai.bundle import ConfigParser

    from scripts.pipeline import stage_parser

    stages = ConfigParser.load_config_files(TRAIN_CONFIG)["stages"]
    parser = stage_parser(next(s for s in stages if s["name"] == "gdc2"), profile, {})
    unknown = [k for k in overrides if k not in parser]
    if unknown:
        raise KeyError(f"not a config key of the G-D-C stages: {', '.join(unknown)}")
    # a variant reuses the seed's detector, C and G-D: a key that only they read would change nothing it trains
    upstream = [k for k in overrides if k.split("#")[0] in UPSTREAM_SECTIONS]
    if upstream:
        raise KeyError(
            f"a variant retrains G-D-C steps 1 and 2 only, beside the seed's detector, C and G-D: "
            f"{', '.join(upstream)} would change nothing it trains"
        )


def check_seed_runs(args: argparse.Namespace, out: Path, variants: dict) -> None:
    """For ``--variants-only``: a variant to train, and the finished seed runs it stands beside, made from one detector
    (the shared one, which makes the crops; ``--detector`` if given must be that file); else a one-line exit."""
    if not variants:
        raise SystemExit("--variants-only: no --variant given")
    shared = out / "shared" / "models" / "detector.pt"
    needed = [shared, *(out / f"seed{s}" / "models" / f"{stem}.pt" for s in args.seeds for stem in VARIANT_COPIES)]
    missing = [p for p in needed if not p.is_file()]
    if missing:
        raise SystemExit(f"--variants-only: no {missing[0]} (run the seeds first, without --variants-only)")
    others = [Path(args.detector)] if args.detector else []
    others += [out / f"seed{s}" / "models" / "detector.pt" for s in args.seeds]
    for other in others:
        if not filecmp.cmp(other, shared, shallow=False):
            raise SystemExit(f"--variants-only: {other} is not the detector the seed runs used ({shared})")


def train(args: argparse.Namespace, t0: float) -> None:
    """The shared detector and crops, then one run per seed, then each variant per seed (module docstring)."""
    data, out, shared = Path(args.data), Path(args.out), Path(args.out) / "shared"
    variants = dict(parse_variant(v) for v in args.variant or [])
    for overrides in variants.values():
        check_overrides(overrides, args.profile)
    if args.variants_only:
        check_seed_runs(args, out, variants)
        log(t0, "variants only: the seed runs in the output folder are used as they are")
    elif args.detector:
        log(t0, f"detector: copied from {args.detector}")
        copy_weights(Path(args.detector), shared / "models", "detector")
    else:
        log(t0, "detector: training once (seed 0) into the shared folder")
        run_step(training_command(data, shared, args.profile, ["detector"], {"seed": 0}))
    crops_dir = shared / "crops" / "crops"
    run_step(crops_command(data, shared, args.profile, crops_dir))
    common = {"crops_csv#out_dir": str(crops_dir)}
    for seed in [] if args.variants_only else args.seeds:
        start = time.perf_counter()
        run = out / f"seed{seed}"
        copy_split(shared, run)
        copy_weights(shared / "models" / "detector.pt", run / "models", "detector")
        log(t0, f"seed {seed}: {', '.join(SEED_STAGES)}")
        run_step(training_command(data, run, args.profile, SEED_STAGES, {"seed": seed, **common}))
        log(t0, f"seed {seed}: done in {time.perf_counter() - start:.0f} s")
    for name, overrides in variants.items():
        for seed in args.seeds:
            start = time.perf_counter()
            run = out / f"seed{seed}-{name}"
            copy_split(shared, run)
            for stem in VARIANT_COPIES:
                copy_weights(out / f"seed{seed}" / "models" / f"{stem}.pt", run / "models", stem)
            log(t0, f"variant {name}, seed {seed}: {', '.join(VARIANT_STAGES)} with {overrides}")
            stage_args = {"seed": seed, **common, **overrides}
            run_step(training_command(data, run, args.profile, VARIANT_STAGES, stage_args))
            log(t0, f"variant {name}, seed {seed}: done in {time.perf_counter() - start:.0f} s")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _flat_floats(doc: dict, prefix: str) -> dict[str, float]:
    """The finite floats of ``doc`` by ``prefix/key`` (nested dicts joined with ``/``); counts and text left out."""
    out: dict[str, float] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out |= _flat_floats(value, f"{prefix}{key}/")
        elif isinstance(value, float) and math.isfinite(value):
            out[f"{prefix}{key}"] = value
    return out


def figures(run: Path) -> dict[str, float]:
    """Every figure of one run folder, by name (``classifier/roc_auc``, ``localisation/<method>/<metric>``,
    ``repaired/<name>/<score>``, ``discriminator/<key>``); what the folder lacks is left out."""
    out: dict[str, float] = {}
    evaluation = _read(run / "classifier" / "evaluation.json") or {}
    auc = _number(((evaluation.get("metrics") or {}).get("roc_auc") or {}).get("value"))
    if auc is not None:
        out["classifier/roc_auc"] = auc
    localisation = _read(run / "localisation" / "localisation.json") or {}
    for group, keys in (("methods", LOCALISATION_KEYS), ("repaired", REPAIRED_KEYS)):
        prefix = "localisation" if group == "methods" else "repaired"
        for name, values in (localisation.get(group) or {}).items():
            for key in keys:
                if (number := _number(values.get(key))) is not None:
                    out[f"{prefix}/{name}/{key}"] = number
    out |= _flat_floats(_read(run / "gd" / "discriminator.json") or {}, "discriminator/")
    return out


def summarise(runs: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{seed: {figure: value}}`` -> ``{figure: {"mean", "min", "max", "n"}}`` over the seeds that have it."""
    names = sorted({k for values in runs.values() for k in values})
    summary = {}
    for name in names:
        values = [v[name] for v in runs.values() if name in v]
        summary[name] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "n": len(values)}
    return summary


def dataset_facts(data: Path, split_file: Path) -> dict[str, Any]:
    """A few facts about the dataset and split (no absolute paths)."""
    facts: dict[str, Any] = {"name": data.resolve().name}
    if (data / "dataset.csv").is_file():
        with open(data / "dataset.csv", newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        facts |= {
            "images": len(rows),
            "patients": len({r["patient_id"] for r in rows}),
            "fracture_images": sum(r["label"].strip() == "1" for r in rows),
        }
        from scripts.fingerprint import dataset_fingerprint

        facts["fingerprint"] = dataset_fingerprint(data)
    if split_file.is_file():
        with open(split_file, newline="", encoding="utf-8-sig") as f:
            splits = [r["split"] for r in csv.DictReader(f)]
        facts["split_images"] = {s: splits.count(s) for s in ("train", "val", "test")}
    return facts


def command_line(args: argparse.Namespace) -> str:
    """The command that makes (and, with ``--collect-only`` added, rebuilds) this table."""
    cmd = ["python", "-m", "tools.seeds", "--data", args.data, "--out", args.out, "--seeds", *map(str, args.seeds)]
    cmd += ["--profile", args.profile] + (["--detector", args.detector] if args.detector else [])
    for tokens in args.variant or []:
        cmd += ["--variant", *tokens]
    return shlex.join(cmd)


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Read every run folder; write ``OUT/seeds.json`` and ``OUT/seeds.md``; return the JSON document."""
    out = Path(args.out)
    variants = dict(parse_variant(v) for v in args.variant or [])
    runs: dict[str, dict[str, dict[str, float]]] = {}
    for name in (MAIN, *variants):
        runs[name] = {}
        for seed in args.seeds:
            folder = out / (f"seed{seed}" if name == MAIN else f"seed{seed}-{name}")
            values = figures(folder)
            if values:
                runs[name][str(seed)] = values
            else:
                print(f"warning: no figures in {folder}", flush=True)
    detector = out / "shared" / "models" / "detector.pt"
    from scripts.fingerprint import file_fingerprint

    doc = {
        "seeds": list(args.seeds),
        "profile": args.profile,
        "dataset": dataset_facts(Path(args.data), out / "shared" / "split.csv"),
        "detector": {
            "source": f"copied from {Path(args.detector).name}" if args.detector else "trained once, seed 0",
            "fingerprint": file_fingerprint(detector),
        },
        "command": command_line(args),
        "variants": {MAIN: {}, **variants},
        "runs": runs,
        "summary": {name: summarise(r) for name, r in runs.items()},
    }
    (out / "seeds.json").write_text(json.dumps(doc, indent=2))
    (out / "seeds.md").write_text(markdown(doc))
    return doc


def _group(name: str) -> str:
    return next((title for title, pattern in GROUPS if re.fullmatch(pattern, name)), "Other")


def _row_label(name: str) -> str:
    parts = name.split("/")
    if parts[0] == "localisation":
        return "/".join(parts[1:-1])
    if parts[0] == "classifier" and parts[1:] == ["roc_auc"]:
        return "ROC AUC"
    return "/".join(parts[1:]) or name


def markdown(doc: dict[str, Any]) -> str:
    """The table of ``seeds.json``: one row a figure, per variant its ``mean [min, max]`` and each seed's value."""
    seeds = [str(s) for s in doc["seeds"]]
    names = list(doc["summary"])
    figures_all = {f for summary in doc["summary"].values() for f in summary}
    lines = [
        "# Figures over seeds",
        "",
        f"Seeds {', '.join(seeds)} (profile `{doc['profile']}`): C, G-D and G-D-C steps 1 and 2 retrained with each "
        "seed on one split, one crop cache and one detector "
        f"({doc['detector']['source']}, fingerprint {doc['detector']['fingerprint']}). "
        "Each cell: mean [min, max] over the seeds that have the figure (n if fewer), then each seed's value.",
        "",
    ]
    for name, overrides in doc.get("variants", {}).items():
        if overrides:
            shown = ", ".join(f"`{k}={v}`" for k, v in overrides.items())
            lines.append(f"- `{name}`: G-D-C steps 1 and 2 retrained with {shown} (C and G-D: the seed's own)")
    facts = doc["dataset"]
    lines += [
        f"- dataset `{facts.get('name')}`: {facts.get('images', '?')} images, {facts.get('patients', '?')} patients, "
        f"{facts.get('fracture_images', '?')} with a fracture; split (images) {facts.get('split_images', '?')}",
        f"- reproduce: `{doc['command']}` (add `--collect-only` to rebuild this table)",
    ]
    header = ["figure"] + [c for n in names for c in (f"{n}: mean [min, max]", f"{n}: " + " / ".join(seeds))]
    for title in [t for t, _ in GROUPS] + ["Other"]:
        rows = sorted(f for f in figures_all if _group(f) == title)
        if not rows:
            continue
        lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for figure in rows:
            cells = [_row_label(figure)]
            for name in names:
                s = doc["summary"][name].get(figure)
                n = f" (n={s['n']})" if s and s["n"] < len(seeds) else ""
                cells.append(f"{s['mean']:.3f} [{s['min']:.3f}, {s['max']:.3f}]{n}" if s else "—")
                per_seed = [doc["runs"][name].get(seed, {}).get(figure) for seed in seeds]
                cells.append(" / ".join("—" if v is None else f"{v:.3f}" for v in per_seed))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Iterable[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/phantom", help="dataset folder (the data contract: dataset.csv)")
    parser.add_argument("--out", default="runs/seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--profile", default="quick", help="quick, paper, tiny or a profile YAML")
    parser.add_argument("--detector", help="existing detector weights (detector.pt) instead of training one")
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        metavar="NAME KEY=VALUE",
        help="an ablation: G-D-C steps 1 and 2 retrained per seed with these config overrides (repeatable)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--collect-only", action="store_true", help="only rebuild seeds.json and seeds.md")
    mode.add_argument("--variants-only", action="store_true", help="train only the variants, beside seed runs in OUT")
    args = parser.parse_args(None if argv is None else list(argv))
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds: each seed once")
    t0 = time.perf_counter()
    if not args.collect_only:
        if not (Path(args.data) / "dataset.csv").is_file():
            parser.error(f"no dataset at {args.data} (make data DATA={args.data} writes the phantom)")
        train(args, t0)
    doc = collect(args)
    log(t0, f"{Path(args.out) / 'seeds.md'}: {sum(len(s) for s in doc['summary'].values())} figures")
    return doc


if __name__ == "__main__":
    main()
