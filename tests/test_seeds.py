"""tools.seeds: the orchestration (with the training replaced by a fake that writes the JSON files), the figures it
collects, the mean/min/max table, --collect-only; and, marked slow, the real thing on the tiny phantom."""

from __future__ import annotations

import ast
import filecmp
import json
from pathlib import Path

import pytest

from tools import seeds


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _arg(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


class FakePipeline:
    """Stands in for ``run_step``: records each command; a training writes weights and the result files, with
    figures made from its seed (and, for G-D-C, from ``gan#gdc_d_weight``)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, cmd: list[str]) -> None:
        if "crops_csv" in cmd:
            out = Path(_arg(cmd, "--output_dir"))
            out.mkdir(parents=True, exist_ok=True)
            (out / "split.csv").write_text("image,patient_id,label,split\na.png,P0,1,train\nb.png,P1,0,test\n")
            self.calls.append({"crops": True, "out": out})
            return
        out, models = Path(_arg(cmd, "--output_dir")), Path(_arg(cmd, "--models_dir"))
        only, args = ast.literal_eval(_arg(cmd, "--only")), ast.literal_eval(_arg(cmd, "--stage_args"))
        self.calls.append({"out": out, "only": only, "args": args, "models": sorted(p.name for p in models.iterdir())})
        seed, d_weight = args["seed"], args.get("gan#gdc_d_weight", 1.0)
        for stage in only:
            (models / f"{stage}.pt").write_text(json.dumps({"stage": stage, **args}))
            _write(models / f"{stage}.fingerprint.json", {"fingerprint": stage})
        if "classifier" in only:
            _write(out / "classifier" / "evaluation.json", {"metrics": {"roc_auc": {"value": 0.9 + seed / 100}}})
        if "gd" in only:
            _write(out / "gd" / "discriminator.json", {"roc_auc_real_vs_generated": 0.5 + seed / 10, "note": "x"})
        if "gdc2" in only:
            methods = {"gdc2[intent]": {"pointing": seed / 4 + d_weight, "dice": 0.1, "iou": 0.05, "energy": 0.2}}
            methods["gradcam"] = {"pointing": 0.5, "dice": 0.3, "iou": 0.2, "energy": 0.4, "dice_ci95": [0.1, 0.5]}
            repaired = {"gdc2[intent]": {k: 0.25 * seed for k in seeds.REPAIRED_KEYS} | {"mean_abs_change": 0.01}}
            _write(out / "localisation" / "localisation.json", {"methods": methods, "repaired": repaired})


def test_summary_is_mean_min_max_over_the_seeds_that_have_the_figure() -> None:
    runs = {"0": {"a": 0.2, "b": 1.0}, "1": {"a": 0.6}, "2": {"a": 0.4, "b": 3.0}}
    summary = seeds.summarise(runs)
    assert summary["a"] == pytest.approx({"mean": 0.4, "min": 0.2, "max": 0.6, "n": 3})
    assert summary["b"] == pytest.approx({"mean": 2.0, "min": 1.0, "max": 3.0, "n": 2})


def test_figures_reads_every_method_and_repaired_entry(tmp_path) -> None:
    run = tmp_path / "seed0"
    _write(run / "classifier" / "evaluation.json", {"metrics": {"roc_auc": {"value": 0.97, "ci_low": 0.9}}})
    methods = {
        "new method": {"pointing": 1, "dice": 0.5, "iou": 0.25, "energy": 0.75, "threshold": 0.3},
        "gdc2[literal]": {"pointing": 0.0, "dice": float("nan"), "iou": 0.1, "energy": 0.2},
    }
    repaired = {"gdc2[literal]": {"c_prob_original": 0.9, "c_prob_repaired": 0.2, "d_prob_original": 0.6}}
    _write(run / "localisation" / "localisation.json", {"methods": methods, "repaired": repaired})
    disc = {"d_prob_real": 0.7, "flag": True, "val_crops": 40, "split": "val", "by_split": {"test": 0.8}}
    _write(run / "gd" / "discriminator.json", disc)
    assert seeds.figures(run) == {
        "classifier/roc_auc": 0.97,
        "localisation/new method/pointing": 1.0,
        "localisation/new method/dice": 0.5,
        "localisation/new method/iou": 0.25,
        "localisation/new method/energy": 0.75,
        "localisation/gdc2[literal]/pointing": 0.0,  # NaN Dice left out, not averaged
        "localisation/gdc2[literal]/iou": 0.1,
        "localisation/gdc2[literal]/energy": 0.2,
        "repaired/gdc2[literal]/c_prob_original": 0.9,
        "repaired/gdc2[literal]/c_prob_repaired": 0.2,
        "repaired/gdc2[literal]/d_prob_original": 0.6,
        "discriminator/d_prob_real": 0.7,
        "discriminator/by_split/test": 0.8,
    }
    assert seeds.figures(tmp_path / "absent") == {}


def test_variant_parsing_and_unknown_keys() -> None:
    assert seeds.parse_variant(["no_d", "gan#gdc_d_weight=0", "gan#mask_polarity=literal"]) == (
        "no_d",
        {"gan#gdc_d_weight": 0, "gan#mask_polarity": "literal"},
    )
    with pytest.raises(ValueError):
        seeds.parse_variant(["no_d"])
    with pytest.raises(ValueError):
        seeds.parse_variant(["main", "seed=1"])
    seeds.check_overrides({"gan#gdc_d_weight": 0, "gdc2#mask_threshold": 0.1}, "tiny")
    with pytest.raises(KeyError, match="gan#gdc_d_wieght"):
        seeds.check_overrides({"gan#gdc_d_wieght": 0}, "tiny")
    for key in ("gd#epochs", "classifier#lr", "seed"):  # read only by stages a variant copies
        with pytest.raises(KeyError, match="would change nothing"):
            seeds.check_overrides({key: 1}, "tiny")


def test_orchestration_and_table(tmp_path, monkeypatch) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    (data / "dataset.csv").write_text("image,patient_id,label\na.png,P0,1\nb.png,P1,0\n")
    detector = tmp_path / "given" / "mydet.pt"
    detector.parent.mkdir()
    detector.write_bytes(b"weights")
    (detector.parent / "mydet.json").write_text("{}")
    fake = FakePipeline()
    monkeypatch.setattr(seeds, "run_step", fake)
    argv = ["--data", str(data), "--out", str(out), "--seeds", "0", "2", "--profile", "tiny"]
    argv += ["--detector", str(detector), "--variant", "no_d", "gan#gdc_d_weight=0"]
    doc = seeds.main(argv)

    # no detector training (given), the crop cache once, then seed 0, seed 2, then the variant per seed
    stages = [c.get("only") for c in fake.calls]
    assert stages == [None, seeds.SEED_STAGES, seeds.SEED_STAGES, seeds.VARIANT_STAGES, seeds.VARIANT_STAGES]
    shared = {"crops_csv#out_dir": str(out / "shared" / "crops" / "crops")}
    assert fake.calls[1]["args"] == {"seed": 0, **shared} and fake.calls[1]["out"] == out / "seed0"
    assert fake.calls[1]["models"] == ["detector.json", "detector.pt"]  # the detector copied in before training
    assert fake.calls[4]["args"] == {"seed": 2, **shared, "gan#gdc_d_weight": 0}
    assert fake.calls[4]["out"] == out / "seed2-no_d"
    copied = ["classifier.fingerprint.json", "classifier.pt", "detector.json", "detector.pt", "gd.fingerprint.json"]
    assert fake.calls[4]["models"] == sorted([*copied, "gd.pt"])
    assert filecmp.cmp(out / "seed2" / "models" / "gd.pt", out / "seed2-no_d" / "models" / "gd.pt", shallow=False)
    assert (out / "seed0" / "models" / "detector.pt").read_bytes() == b"weights"
    for run in ("seed0", "seed2-no_d"):  # the shared split in every run folder
        assert filecmp.cmp(out / "shared" / "split.csv", out / run / "split.csv", shallow=False)

    saved = json.loads((out / "seeds.json").read_text())
    assert saved == json.loads(json.dumps(doc))
    assert saved["seeds"] == [0, 2] and saved["profile"] == "tiny"
    assert saved["dataset"]["images"] == 2 and saved["dataset"]["split_images"] == {"train": 1, "val": 0, "test": 1}
    assert str(tmp_path) not in json.dumps(saved["dataset"]) + json.dumps(saved["detector"])
    main = saved["summary"]["main"]
    assert main["classifier/roc_auc"] == pytest.approx({"mean": 0.91, "min": 0.9, "max": 0.92, "n": 2})
    assert main["localisation/gdc2[intent]/pointing"] == pytest.approx({"mean": 1.25, "min": 1.0, "max": 1.5, "n": 2})
    assert main["discriminator/roc_auc_real_vs_generated"]["max"] == pytest.approx(0.7)
    assert saved["runs"]["main"]["2"]["repaired/gdc2[intent]/c_prob_repaired"] == 0.5
    no_d = saved["summary"]["no_d"]
    assert no_d["localisation/gdc2[intent]/pointing"] == pytest.approx({"mean": 0.25, "min": 0.0, "max": 0.5, "n": 2})
    assert "classifier/roc_auc" not in no_d  # C is not evaluated again in a variant
    assert saved["variants"] == {"main": {}, "no_d": {"gan#gdc_d_weight": 0}}
    assert saved["command"].startswith("python -m tools.seeds --data") and "--variant no_d" in saved["command"]

    table = (out / "seeds.md").read_text()
    assert "| ROC AUC | 0.910 [0.900, 0.920] | 0.900 / 0.920 | — | — / — |" in table
    assert "| gdc2[intent] | 1.250 [1.000, 1.500] | 1.000 / 1.500 | 0.250 [0.000, 0.500] | 0.000 / 0.500 |" in table
    assert table.index("## Classifier") < table.index("pointing game") < table.index("## Repaired")

    # --collect-only: no training, the same table from the run folders
    (out / "seeds.json").unlink()
    (out / "seeds.md").unlink()
    monkeypatch.setattr(seeds, "run_step", lambda cmd: pytest.fail(f"collect-only ran {cmd}"))
    seeds.main([*argv, "--collect-only"])
    assert json.loads((out / "seeds.json").read_text()) == saved
    assert (out / "seeds.md").read_text() == table


def test_detector_trained_once_when_not_given(tmp_path, monkeypatch) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    (data / "dataset.csv").write_text("image,patient_id,label\na.png,P0,1\n")
    fake = FakePipeline()

    def pipeline(cmd: list[str]) -> None:
        if "--only" in cmd and ast.literal_eval(_arg(cmd, "--only")) == ["detector"]:
            models = Path(_arg(cmd, "--models_dir"))
            models.mkdir(parents=True)
            (models / "detector.pt").write_bytes(b"trained")
            fake.calls.append({"only": ["detector"], "args": ast.literal_eval(_arg(cmd, "--stage_args"))})
            return
        fake(cmd)

    monkeypatch.setattr(seeds, "run_step", pipeline)
    seeds.main(["--data", str(data), "--out", str(out), "--seeds", "0", "1", "--profile", "tiny"])
    assert [c.get("only") for c in fake.calls] == [["detector"], None, seeds.SEED_STAGES, seeds.SEED_STAGES]
    assert fake.calls[0]["args"] == {"seed": 0}
    assert (out / "seed1" / "models" / "detector.pt").read_bytes() == b"trained"


def test_variants_only_adds_an_ablation_beside_the_seed_runs(tmp_path, monkeypatch) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    (data / "dataset.csv").write_text("image,patient_id,label\na.png,P0,1\nb.png,P1,0\n")
    detector = tmp_path / "det.pt"
    detector.write_bytes(b"weights")
    fake = FakePipeline()
    monkeypatch.setattr(seeds, "run_step", fake)
    argv = ["--data", str(data), "--out", str(out), "--seeds", "0", "1", "--profile", "tiny"]
    argv += ["--detector", str(detector)]
    with pytest.raises(SystemExit, match="no --variant given"):
        seeds.main([*argv, "--variants-only"])
    variant = ["--variant", "no_d", "gan#gdc_d_weight=0"]
    with pytest.raises(SystemExit, match="shared/models/detector.pt"):  # no seed run to stand beside
        seeds.main([*argv, *variant, "--variants-only"])
    assert fake.calls == []

    seeds.main(argv)  # the seed runs
    before = {p: p.read_bytes() for p in sorted(out.glob("seed*/models/*")) + sorted(out.glob("shared/models/*"))}
    fake.calls.clear()
    doc = seeds.main([*argv, *variant, "--variants-only"])
    assert [c.get("only") for c in fake.calls] == [None, seeds.VARIANT_STAGES, seeds.VARIANT_STAGES]
    assert [c["out"].name for c in fake.calls[1:]] == ["seed0-no_d", "seed1-no_d"]
    assert set(doc["summary"]) == {"main", "no_d"} and "--variants-only" not in doc["command"]
    assert before == {p: p.read_bytes() for p in before}  # the seed runs and the shared detector untouched

    other = tmp_path / "other.pt"
    other.write_bytes(b"other weights")
    with pytest.raises(SystemExit, match="other.pt is not the detector the seed runs used"):
        seeds.main([*argv[:-1], str(other), *variant, "--variants-only"])
    (out / "seed1" / "models" / "classifier.pt").unlink()
    with pytest.raises(SystemExit, match="seed1/models/classifier.pt"):
        seeds.main([*argv, *variant, "--variants-only"])


def _pipeline(run: Path) -> dict:
    return json.loads((run / "pipeline.json").read_text())["stages"]


@pytest.mark.slow
def test_tiny_phantom_end_to_end(tiny_dataset, models, tmp_path) -> None:
    """Two seeds and one variant for real (tiny profile, the untrained test detector): the variant retrains G-D-C
    with its override beside the seed's own C and G-D, and the same command again trains nothing."""
    out = tmp_path / "seeds"
    argv = ["--data", str(tiny_dataset), "--out", str(out), "--seeds", "0", "1", "--profile", "tiny"]
    argv += ["--detector", str(models / "detector.pt"), "--variant", "no_d", "gan#gdc_d_weight=0"]
    doc = seeds.main(argv)

    for seed in ("0", "1"):
        main, no_d = doc["runs"]["main"][seed], doc["runs"]["no_d"][seed]
        assert {"classifier/roc_auc", "localisation/gradcam/dice", "localisation/occlusion/pointing"} <= set(main)
        assert any(k.startswith("repaired/gdc2[") for k in main) and any(
            k.startswith("localisation/gdc2[") for k in no_d
        )
        assert not any(k.startswith("classifier/") for k in no_d)
        variant, own = out / f"seed{seed}-no_d", out / f"seed{seed}"
        assert sorted(_pipeline(variant)) == ["gdc1", "gdc2"]
        assert not any("status" in s for s in _pipeline(variant).values())  # trained, not skipped
        for stem in ("detector", "classifier", "gd"):
            assert filecmp.cmp(own / "models" / f"{stem}.pt", variant / "models" / f"{stem}.pt", shallow=False)
        mine, theirs = (
            json.loads((r / "models" / "gdc1.fingerprint.json").read_text())["parts"] for r in (variant, own)
        )
        assert {k for k in mine if mine[k] != theirs[k]} == {"config"}  # the override, nothing upstream
    assert not filecmp.cmp(out / "seed0/models/gd.pt", out / "seed1/models/gd.pt", shallow=False)  # the seed acts
    summary = doc["summary"]["main"]["localisation/gradcam/dice"]
    values = [doc["runs"]["main"][s]["localisation/gradcam/dice"] for s in ("0", "1")]
    assert summary == pytest.approx({"mean": sum(values) / 2, "min": min(values), "max": max(values), "n": 2})

    assert seeds.main(argv) == doc  # the same figures, and every stage skipped
    for run in ("seed0", "seed1", "seed0-no_d", "seed1-no_d"):
        assert all(s.get("status", "").startswith("skipped") for s in _pipeline(out / run).values()), run
