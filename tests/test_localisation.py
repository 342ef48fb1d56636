"""Masks and region maps (shape, range, threshold choice) and the localisation metrics and evaluation config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts.localisation import energy_share, evaluate, markdown_table, pointing_hit, score_maps
from scripts.masks import (
    calibrate_region,
    change,
    choose_threshold,
    classifier_mask,
    dice_iou,
    generator_mask,
    region_map,
    scale01,
)
from scripts.networks import Discriminator, Generator, save_networks

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"


@pytest.fixture(scope="module")
def classifier():
    from scripts.classifier import FractureClassifier

    torch.manual_seed(0)
    return FractureClassifier().eval()


@pytest.mark.parametrize("mode", ["cam", "channel_mean"])
def test_classifier_mask_shape_and_range(classifier, mode: str) -> None:
    x = torch.rand(3, 1, 64, 64)
    m = classifier_mask(x, classifier, mode)
    assert m.shape == x.shape and m.dtype == torch.float32
    assert m.min() >= 0 and m.max() <= 1
    assert all(float(mi.max()) in (0.0, 1.0) for mi in m)  # scaled per image (an all-zero map stays zero)
    assert not any(p.grad is not None for p in classifier.parameters())


def test_cam_equals_monai_gradcam_at_the_last_conv_layer() -> None:
    """Both maps are Grad-CAM with the same orientation (largest = most fracture evidence), on a non-trivial map."""
    from scripts.classifier import FractureClassifier
    from scripts.localisation import gradcam_maps
    from scripts.masks import last_conv_activation

    torch.manual_seed(1)
    net = FractureClassifier("convnet", "gray").eval()
    torch.nn.init.uniform_(net.net._fc.weight, 0.5, 1.0)  # positive weights: a CAM with a clear maximum
    x = torch.rand(2, 1, 64, 64)
    act, grad = last_conv_activation(net, x)
    by_hand = torch.relu((grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True))
    assert (by_hand.flatten(1).amax(1) > 0).all() and (by_hand.flatten(1).amin(1) < by_hand.flatten(1).amax(1)).all()
    expected = scale01(torch.nn.functional.interpolate(by_hand, size=(64, 64), mode="bilinear", align_corners=False))
    assert torch.allclose(classifier_mask(x, net, "cam"), expected, atol=1e-4)
    assert torch.allclose(gradcam_maps(net, x), expected, atol=1e-4)  # not MONAI's default (min, max) -> (1, 0)


def test_generator_mask_and_region_map() -> None:
    gen = Generator((4, 4, 8, 8, 16, 4)).eval()
    x = torch.rand(2, 1, 32, 32)
    m = generator_mask(x, gen, threshold=0.06)
    assert m.shape == x.shape and set(m.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(m, (torch.abs(gen(x) - x) > 0.06).float())
    gen.region = {"threshold": 0.4, "sigma": 1.0}
    rmap, binary = region_map(gen, x)
    assert rmap.shape == binary.shape == x.shape
    assert rmap.min() >= 0 and torch.allclose(rmap.flatten(1).max(1).values, torch.ones(2))
    assert torch.equal(binary, rmap >= 0.4)


class Repair(torch.nn.Module):
    """A stand-in generator: adds 0.3 on rows 4-7 and takes 0.2 away on rows 20-23 of every crop."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[..., 4:8, 4:28] += 0.3
        out[..., 20:24, 4:28] -= 0.2
        return out


def test_map_modes_keep_the_part_of_the_change_they_name() -> None:
    diff = torch.tensor([0.3, -0.2, 0.0])
    assert torch.allclose(change(diff, "abs"), torch.tensor([0.3, 0.2, 0.0]))
    assert torch.allclose(change(diff, "added"), torch.tensor([0.3, 0.0, 0.0]))
    assert torch.allclose(change(diff, "removed"), torch.tensor([0.0, 0.2, 0.0]))
    with pytest.raises(ValueError, match="map mode"):
        change(diff, "signed")


@pytest.mark.parametrize(
    ("rows", "modes", "chosen"),
    [
        (slice(20, 24), ["abs", "added", "removed"], "removed"),  # the truth is where the repair took density away
        (slice(4, 8), ["abs", "added", "removed"], "abs"),  # abs and added both point there: the tie goes to the first
        (slice(20, 24), ["abs"], "abs"),  # the thesis's map alone
    ],
)
def test_region_mode_is_the_one_that_points_best_on_validation(tmp_path, rows, modes, chosen) -> None:
    from PIL import Image

    records = []
    for i in range(3):
        Image.fromarray(np.tile(np.arange(100, 132, dtype=np.uint8), (32, 1))).save(tmp_path / f"x{i}.png")
        truth = np.zeros((32, 32), np.uint8)
        truth[rows, 4:28] = 255
        Image.fromarray(truth).save(tmp_path / f"m{i}.png")
        records.append({"image": str(tmp_path / f"x{i}.png"), "mask": str(tmp_path / f"m{i}.png")})
    region = calibrate_region(Repair(), records, sigma=0.0, modes=modes, tolerance=0)
    assert region["mode"] == chosen and region["threshold_source"] == "validation"
    assert region["val_pointing"]["abs"] == (1.0 if rows.start == 4 else 0.0)
    gen = Repair()
    gen.region = region
    _, binary = region_map(gen, torch.full((1, 1, 32, 32), 128 / 255))
    assert binary[0, 0, rows, 4:28].all()  # the stored mode and threshold give the true region at inference
    assert binary[0, 0, 4:8, 4:28].all() == (chosen != "removed")  # what the repair added is not in a removed map
    with pytest.raises(ValueError, match="region map modes"):
        calibrate_region(Repair(), records, modes=["sideways"])


def test_scale_and_metrics_on_known_maps() -> None:
    assert torch.equal(scale01(torch.tensor([[[[2.0, 4.0], [6.0, 6.0]]]])), torch.tensor([[[[0.0, 0.5], [1.0, 1.0]]]]))
    assert torch.equal(scale01(torch.full((1, 1, 2, 2), 3.0)), torch.zeros(1, 1, 2, 2))
    truth = np.zeros((20, 20), bool)
    truth[5:8, 5:8] = True
    rmap = np.zeros((20, 20))
    rmap[10, 7] = 1.0  # 3 px below the region
    assert not pointing_hit(rmap, truth, tolerance=2)
    assert pointing_hit(rmap, truth, tolerance=3)
    rmap[6, 6] = 1.0  # ties: the first maximum (row-major) counts
    assert pointing_hit(rmap, truth, tolerance=0)
    assert energy_share(rmap, truth) == pytest.approx(0.5)
    assert dice_iou(truth, truth) == (1.0, 1.0)
    half = truth.copy()
    half[5] = False
    assert dice_iou(half, truth) == pytest.approx((2 * 6 / 15, 6 / 9))
    maps = np.stack([np.where(truth, 0.7, 0.2), np.where(truth, 0.9, 0.5)])
    t, d = choose_threshold(maps, np.stack([truth, truth]))
    assert 0.5 < t <= 0.7 and d == pytest.approx(1.0)
    scores = score_maps(maps, np.stack([truth, truth]), t, tolerance=0, bootstrap=50)
    assert scores["pointing"] == 1.0 and scores["dice"] == pytest.approx(1.0)
    assert scores["pointing_ci95"] == [1.0, 1.0]


def test_localisation_config_writes_table_and_figure(tiny_dataset, tmp_path, classifier) -> None:
    from monai.bundle import run

    from scripts.classifier import save_classifier
    from scripts.masks import load_region_model, save_region_model
    from scripts.splits import ensure_split

    models, out = tmp_path / "models", tmp_path / "out"
    ensure_split(tiny_dataset, out / "split.csv", fractions=(0.6, 0.2, 0.2))
    overrides = {
        "dataset_dir": str(tiny_dataset),
        "output_dir": str(out),
        "models_dir": str(models),
        "crop_source": "landmarks",
        "split_fractions": [0.6, 0.2, 0.2],
        # no run_name: the default (stage name + time) must resolve when a stage config is run on its own
        "localisation#occlusion": {"mask_size": 32, "overlap": 0.0, "mode": "mean_patch", "n_batch": 8},
        "localisation#variants": {"other": {"gdc1": str(models / "gdc1.pt"), "gdc2": str(models / "gdc2.pt")}},
    }
    torch.manual_seed(0)
    save_classifier(models / "classifier.pt", classifier, 0.5, {"crop_size": 64})
    gen = Generator((4, 4, 8, 8, 16, 4))
    save_networks(models / "gd.pt", {"stage": "gd"}, generator=gen, discriminator=Discriminator((4, 8), feature_dim=8))
    save_networks(models / "gdc1.pt", {"stage": "gdc1", "mask_polarity": "intent"}, generator=gen)
    from scripts.crops import crop_records, ensure_crops

    csv = ensure_crops(tiny_dataset, out / "split.csv", out / "crops", 64, "landmarks")
    save_region_model(
        models / "gdc2.pt", gen, crop_records(csv, "val", label=1), sigma=1.0, modes=["abs", "added", "removed"]
    )
    files = [
        str(CONFIGS / f)
        for f in (
            "common.yaml",
            "crop_training.yaml",
            "gan_common.yaml",
            "gdc_common.yaml",
            "gdc2.yaml",
            "localisation_evaluate.yaml",
            "profiles/tiny.yaml",
        )
    ]
    run(
        config_file=files,
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        **overrides,
    )
    result = json.loads((out / "localisation" / "localisation.json").read_text())
    rows = ("", " abs", " added", " removed", " in step-1 region")
    assert set(result["methods"]) == {
        *(f"gdc2[{tag}]{row}" for tag in ("intent", "other") for row in rows),
        "gdc1[intent]",
        "gdc1[other]",
        "gradcam",
        "occlusion",
    }
    assert result["methods"]["gdc2[other]"] == result["methods"]["gdc2[intent]"]  # the same weights, the same scores
    shipped = load_region_model(models / "gdc2.pt").region["mode"]  # the stored mode is the shipped row's map
    for key in ("pointing", "val_pointing", "energy"):
        assert result["methods"]["gdc2[intent]"][key] == result["methods"][f"gdc2[intent] {shipped}"][key]
    for scores in result["methods"].values():
        for key in ("pointing", "dice", "iou", "energy", "val_pointing"):
            assert 0.0 <= scores[key] <= 1.0
    assert result["test_crops"] > 0 and result["val_crops"] > 0
    assert 0.0 <= result["repaired"]["gdc2[intent]"]["c_prob_repaired"] <= 1.0
    assert "| gdc2[intent] |" in (out / "localisation" / "localisation.md").read_text()
    assert (out / "localisation" / "cases.png").stat().st_size > 0


def test_validation_split_is_labelled_as_development_only() -> None:
    method = {"threshold": 0.5, **{k: 0.5 for k in ("pointing", "dice", "iou", "energy")}}
    method.update({f"{k}_ci95": [0.4, 0.6] for k in ("pointing", "dice", "iou", "energy")})
    common = {"test_crops": 3, "val_crops": 3, "pointing_tolerance_px": 3, "methods": {"m": method}, "repaired": {}}
    assert markdown_table({**common, "split": "test"}).startswith("Test fracture crops: 3")
    assert markdown_table({**common, "split": "val"}).startswith("VALIDATION (development only")
    with pytest.raises(ValueError, match="split must be"):
        evaluate("unused.csv", "unused", None, None, "a.pt", "b.pt", split="train")
