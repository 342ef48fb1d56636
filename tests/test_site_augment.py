"""Site augmentations (issue 14, row (b)): each effect does what it says, probability 0 is the identity, the default
config trains exactly as before, and profiles/quick_sites.yaml turns them on."""

from __future__ import annotations

from copy import copy
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.transforms import Compose
from PIL import Image

from scripts import BUNDLE_ROOT
from scripts.detector_training import DEVICE_EFFECTS, DetectorTrainer, YoloDeviceAugment
from scripts.pipeline import stage_files
from scripts.transforms import RandToneCurve, RandUnsharpMask, RandUnsharpMaskd, tone_curve, unsharp_mask

CONFIGS = BUNDLE_ROOT / "configs"
STAGES = {s["name"]: s for s in ConfigParser.load_config_file(CONFIGS / "train.yaml")["stages"]}
SITES = str(CONFIGS / "profiles" / "quick_sites.yaml")
OFF = {f"{e}_prob": 0.0 for e in DEVICE_EFFECTS}


def _parser(stage: str, profile: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(stage_files(STAGES[stage], "train", profile))
    return parser


def _gray(rows: int = 48, cols: int = 40) -> np.ndarray:
    """A ``(rows, cols, 3)`` uint8 gray image holding 0, 255 and mid-grey."""
    gray = np.random.default_rng(0).integers(1, 255, (rows, cols), dtype=np.uint8)
    gray[0, 0], gray[0, 1], gray[0, 2] = 0, 255, 128
    return np.repeat(gray[..., None], 3, axis=2)


def test_tone_curve_is_an_s_curve_keeping_0_and_1() -> None:
    x = torch.linspace(0, 1, 101)
    y = tone_curve(x, contrast=5.0, mid=0.5)
    assert torch.allclose(y[[0, -1]], torch.tensor([0.0, 1.0]), atol=1e-6)
    assert (y.diff() > 0).all()  # monotone
    assert (y[10:50] < x[10:50]).all() and (y[51:91] > x[51:91]).all()  # darker below the midpoint, brighter above


def test_unsharp_mask_keeps_flat_and_overshoots_at_an_edge() -> None:
    flat = torch.full((1, 32, 32), 0.4)
    assert torch.allclose(unsharp_mask(flat, 1.0, 2.0), flat)  # the border is replicated: no bright frame
    step = torch.zeros(1, 32, 32)
    step[:, :, 16:] = 0.8
    out = unsharp_mask(step, 1.0, 2.0)
    assert out[0, 8, 15] < 0 and out[0, 8, 16] > 0.8  # dark and bright bands on either side of the edge
    assert torch.allclose(out[0, 8, :4], step[0, 8, :4], atol=1e-4)  # far from it: unchanged


def test_probability_0_is_the_identity_bit_for_bit() -> None:
    img = torch.rand(1, 24, 24)
    for t in (RandToneCurve(prob=0.0), RandUnsharpMask(prob=0.0)):
        assert t(img) is img
    d = RandUnsharpMaskd("image", prob=0.0)({"image": img})
    assert d["image"] is img
    labels = {"img": _gray()}
    out = YoloDeviceAugment(prob=0.0, seed=0, **OFF)({"img": labels["img"].copy()})["img"]
    assert np.array_equal(out, labels["img"])


def test_salt_pepper_alone_draws_as_before() -> None:
    """With every device effect off, the hook's random numbers are the former YoloSaltPepper's, call after call."""
    img, rng = _gray(), np.random.default_rng(7)
    hook = YoloDeviceAugment(prob=0.5, amount=0.05, seed=7, **OFF)
    for _ in range(6):
        out = hook({"img": img.copy()})["img"]
        expected = img.copy()
        if rng.random() < 0.5:  # the former code: one draw for the probability, then the positions
            flat = expected.reshape(-1, 3)
            idx = rng.choice(flat.shape[0], size=round(0.05 * flat.shape[0]), replace=False, shuffle=False)
            flat[idx[: len(idx) // 2]], flat[idx[len(idx) // 2 :]] = 0, 255
        assert np.array_equal(out, expected)


def test_detector_hook_effects() -> None:
    img = _gray()

    def run(**effects) -> np.ndarray:
        return YoloDeviceAugment(prob=0.0, seed=0, **{**OFF, **effects})({"img": img.copy()})["img"]

    assert np.array_equal(run(invert_prob=1.0), 255 - img)  # x -> 1 - x
    gamma = run(gamma_prob=1.0, gamma=(2.0, 2.0))
    assert gamma[0, 0, 0] == 0 and gamma[0, 1, 0] == 255 and gamma[0, 2, 0] == round(255 * (128 / 255) ** 2)
    tone = run(tone_prob=1.0, tone=(5.0, 5.0), tone_mid=(0.5, 0.5))
    assert tone[0, 0, 0] == 0 and tone[0, 1, 0] == 255 and tone.std() > img.std()  # more contrast
    sharp = run(sharpen_prob=1.0, sharpen_amount=(1.0, 1.0), sharpen_sigma=(2.0, 2.0))
    assert sharp.dtype == np.uint8 and sharp.shape == img.shape and (sharp == sharp[..., :1]).all()
    edges = [np.abs(np.diff(a[..., 0].astype(float), axis=1)).mean() for a in (img, sharp)]
    assert edges[1] > edges[0]  # steeper steps between neighbours


def test_classifier_gamma_and_inversion_from_the_config() -> None:
    parser = _parser("classifier", SITES)
    parser["classifier#augment#gamma"] = [2.0, 2.0]
    names = {type(t).__name__: t for t in parser.get_parsed_content("site_augmentation")}
    gamma, invert = names["RandAdjustContrastd"], names["RandLambdad"]
    gamma.prob, invert.prob = 1.0, 1.0
    x = torch.tensor([[[0.0, 0.5, 1.0]]])
    assert torch.allclose(torch.as_tensor(gamma({"image": x})["image"]), torch.tensor([[[0.0, 0.25, 1.0]]]))
    assert torch.equal(torch.as_tensor(invert({"image": x})["image"]), 1 - x)


def test_default_config_trains_as_before() -> None:
    """No site transform in the classifier's list and none active in the detector's hook, under every profile but
    quick_sites; the detector run's fingerprint is the one of salt-and-pepper alone."""
    for profile in ("quick", "paper", "tiny", "quick_efficientnet"):
        parser = _parser("classifier", profile)
        assert parser.get_parsed_content("site_augmentation") == []
        shared = [*parser.get_parsed_content("load_transforms"), *parser.get_parsed_content("augmentation")]
        names = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
        assert names == [type(t).__name__ for t in shared]
    det = _parser("detector", "quick")
    settings = det.get_parsed_content("detector#salt_pepper")
    assert YoloDeviceAugment.active(settings) == {"prob": 0.5, "amount": 0.05}
    assert det.get_parsed_content("detector#augment#scale") == 0.0


def _trainer(tmp_path: Path, salt_pepper: dict) -> DetectorTrainer:
    data = tmp_path / "yolo_data"
    data.mkdir(exist_ok=True)
    (data / "export.json").write_text('{"fingerprint": "x"}')
    args = dict(model="yolov8n.yaml", imgsz=64, epochs=1, batch=4, optimizer="AdamW", lr0=0.01, margin=0.3)
    return DetectorTrainer(
        str(data / "data.yaml"), str(tmp_path / "run"), str(tmp_path / "d.pt"), salt_pepper=salt_pepper, **args
    )


def test_detector_run_fingerprint_unchanged_while_the_effects_are_off(tmp_path: Path) -> None:
    settings = _parser("detector", "quick").get_parsed_content("detector#salt_pepper")
    before = _trainer(tmp_path, {"prob": 0.5, "amount": 0.05}).fingerprint()
    assert _trainer(tmp_path, settings).fingerprint() == before
    assert _trainer(tmp_path, {**settings, "invert_prob": 0.2}).fingerprint() != before


def test_quick_sites_profile_turns_them_on() -> None:
    cls = _parser("classifier", SITES)
    names = [type(t).__name__ for t in cls.get_parsed_content("site_augmentation")]
    assert names == [
        "RandToneCurved",
        "RandAdjustContrastd",
        "RandUnsharpMaskd",
        "RandShiftIntensityd",
        "ScaleIntensityRanged",
        "RandLambdad",
    ]
    assert cls.get_parsed_content("classifier#augment#zoom") > 0.05
    # a batch of crops with every effect applied: in [0, 1], the crop's shape, collated as training collates it
    every = _parser("classifier", SITES)
    for effect in ("tone", "gamma", "sharpen", "brightness", "invert"):
        every[f"classifier#augment#{effect}_prob"] = 1.0
    transforms = every.get_parsed_content("train#preprocessing").transforms[1:]  # after LoadImaged
    data = [{"image": np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32), "label": i % 2} for i in range(8)]
    batch = next(iter(DataLoader(Dataset(data, Compose(transforms).set_random_state(0)), batch_size=8)))
    image = torch.as_tensor(batch["image"])
    assert image.shape == (8, 1, 32, 32) and image.min() >= 0 and image.max() <= 1 and torch.isfinite(image).all()
    det = _parser("detector", SITES)
    settings = det.get_parsed_content("detector#salt_pepper")
    assert all(settings[f"{e}_prob"] > 0 for e in DEVICE_EFFECTS) and settings["prob"] == 0.5
    assert det.get_parsed_content("detector#augment#scale") > 0
    YoloDeviceAugment(**settings, seed=0)({"img": _gray()})  # every key is one of the hook's


def test_detector_hook_keeps_the_boxes_valid_under_scale(tmp_path: Path) -> None:
    """The training dataset as NasalBoneTrainer builds it, with Ultralytics' scale and every device effect on."""
    from scripts.yolo_export import prepare_ultralytics

    prepare_ultralytics(tmp_path / "ultralytics")
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset

    from scripts.detector_training import _device_dataset_class

    images, labels = tmp_path / "images" / "train", tmp_path / "labels" / "train"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(_gray(96, 96)[..., 0]).save(images / f"{i}.png")
        (labels / f"{i}.txt").write_text(f"0 {0.3 + 0.1 * i} 0.5 0.2 0.3\n")
    settings = {"prob": 0.5, "amount": 0.05, **{f"{e}_prob": 1.0 for e in DEVICE_EFFECTS}}
    cfg = get_cfg(overrides={"imgsz": 64, "scale": 0.5, "translate": 0.25, "mosaic": 0.0, "fliplr": 0.0})
    dataset = build_yolo_dataset(cfg, str(images), 4, {"names": {0: "nasal_bone"}, "nc": 1, "channels": 3})
    dataset.__class__ = _device_dataset_class(settings, seed=0)
    dataset.transforms = dataset.build_transforms(copy(cfg))
    assert any(isinstance(t, YoloDeviceAugment) for t in dataset.transforms.transforms)
    kept = 0
    for i in range(12):
        item = dataset[i % 4]
        boxes = item["bboxes"]  # normalised xywh
        assert item["img"].shape[-2:] == (64, 64)
        assert len(boxes) <= 1 and ((boxes >= 0) & (boxes <= 1)).all() and (boxes[:, 2:] > 0).all()
        kept += len(boxes)
    assert kept >= 8  # scale 0.5-1.5 and translation 25% lose few boxes
    instances = object()  # the hook passes the labels through: intensity only
    assert YoloDeviceAugment(**settings, seed=0)({"img": _gray(), "instances": instances})["instances"] is instances
    dataset.__class__ = _device_dataset_class({"prob": 0.0, "amount": 0.05, **OFF}, seed=0)
    off = dataset.build_transforms(copy(cfg)).transforms
    assert not any(isinstance(t, YoloDeviceAugment) for t in off)
