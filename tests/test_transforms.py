"""Augmentations: landmarks and masks move with the image; salt-and-pepper hits the asked fraction."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import ApplyTransformToPointsd, Compose, RandAffined, RandFlipd

from scripts.transforms import LandmarksToPointsd, PointsToLandmarksd, RandSaltPepper, RandSaltPepperd


def _spot_image(points: list[tuple[int, int]], size: int = 96) -> MetaTensor:
    img = torch.zeros(1, size, size)
    for x, y in points:
        img[0, y - 1 : y + 2, x - 1 : x + 2] = 1.0
    return MetaTensor(img, affine=torch.eye(3))


def test_landmarks_and_mask_follow_flip_rotation_translation_zoom() -> None:
    nasion, tip = (30, 25), (60, 70)
    data = {
        "image": _spot_image([nasion]),
        "mask": _spot_image([tip]),
        "nasion_x": nasion[0],
        "nasion_y": nasion[1],
        "tip_x": tip[0],
        "tip_y": tip[1],
    }
    aug = Compose(
        [
            LandmarksToPointsd(),
            RandFlipd(["image", "mask"], prob=1.0, spatial_axis=1),
            RandAffined(
                ["image", "mask"],
                prob=1.0,
                rotate_range=0.9,
                translate_range=(10, 10),
                scale_range=(0.05, 0.05),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            ApplyTransformToPointsd("points", refer_keys="image", dtype=torch.float64),
            PointsToLandmarksd(),
        ]
    )
    for seed in range(5):
        aug.set_random_state(seed)
        out = aug(dict(data))
        # the bright spot of the image is where the moved nasion says, and the mask's spot where the tip says
        for key, (kx, ky) in (("image", ("nasion_x", "nasion_y")), ("mask", ("tip_x", "tip_y"))):
            arr = out[key][0].numpy()
            yy, xx = np.mgrid[0 : arr.shape[0], 0 : arr.shape[1]]
            x, y = (arr * xx).sum() / arr.sum(), (arr * yy).sum() / arr.sum()  # centre of the moved spot
            assert abs(x - out[kx]) <= 1.0 and abs(y - out[ky]) <= 1.0, (seed, key, (x, y), (out[kx], out[ky]))
    assert out["nasion_x"] != nasion[0] or out["nasion_y"] != nasion[1]


def test_salt_and_pepper_fraction_and_shared_pixels() -> None:
    img = torch.full((1, 200, 200), 0.5)
    out = RandSaltPepper(prob=1.0, amount=0.05).set_random_state(0)(img)
    assert out.shape == img.shape  # values at the image's own min/max (both 0.5 here) leave it unchanged
    img[0, 0, 0], img[0, 0, 1] = 0.0, 1.0
    out = RandSaltPepper(prob=1.0, amount=0.05).set_random_state(0)(img)
    changed = (out != img).float().mean().item()
    assert 0.04 < changed < 0.06
    assert set(torch.unique(out[out != img]).tolist()) <= {0.0, 1.0}
    d = RandSaltPepperd(["a", "b"], prob=1.0, amount=0.05).set_random_state(1)({"a": img.clone(), "b": img.clone()})
    assert torch.equal(d["a"], d["b"])
    assert torch.equal(RandSaltPepper(prob=0.0)(img), img)
