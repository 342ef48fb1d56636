"""MONAI-style transforms that MONAI itself lacks.

- ``RandSaltPepper``/``RandSaltPepperd``: set a fraction of pixels to the minimum or maximum value
  (the thesis's detector augmentation, 5% of pixels).
- ``LandmarksToPointsd``/``PointsToLandmarksd``: carry the two landmarks through MONAI spatial
  transforms as a ``(1, 2, 2)`` points array in spatial-axis order (row y, column x), the form
  ``ApplyTransformToPointsd`` moves with the image's affine.

Every other augmentation of the thesis is a MONAI transform named in the stage configs:
``RandFlipd`` (horizontal flip: spatial axis 1), ``RandAffined`` (translation, rotation, zoom),
``RandScaleIntensityFixedMeand`` (contrast), ``RandScaleIntensityd`` (brightness).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_tensor

LANDMARK_KEYS = ("nasion_x", "nasion_y", "tip_x", "tip_y")


class RandSaltPepper(RandomizableTransform):
    """With probability ``prob``, set ``amount`` of the pixels to ``low`` or ``high`` (half each).

    ``low``/``high`` default to the image's own minimum and maximum.
    """

    def __init__(self, prob: float = 0.5, amount: float = 0.05, low: float | None = None, high: float | None = None):
        RandomizableTransform.__init__(self, prob)
        if not 0.0 <= amount <= 1.0:
            raise ValueError(f"amount must be in [0, 1], got {amount}")
        self.amount, self.low, self.high = amount, low, high
        self._noise: np.ndarray | None = None

    def randomize(self, shape) -> None:  # type: ignore[override]
        super().randomize(None)
        if self._do_transform:
            u = self.R.random_sample(shape)
            self._noise = np.where(u < self.amount / 2, -1, np.where(u < self.amount, 1, 0)).astype(np.int8)

    def __call__(self, img, randomize: bool = True):
        if randomize:
            self.randomize(img.shape)
        if not self._do_transform:
            return img
        out = convert_to_tensor(img, track_meta=True).clone()
        low = out.min() if self.low is None else self.low
        high = out.max() if self.high is None else self.high
        noise = torch.as_tensor(self._noise, device=out.device)
        out[noise < 0] = low
        out[noise > 0] = high
        return out


class RandSaltPepperd(RandomizableTransform, MapTransform):
    """Dictionary version of ``RandSaltPepper``; the same pixels are hit in every key."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        amount: float = 0.05,
        low=None,
        high=None,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.noise = RandSaltPepper(prob=1.0, amount=amount, low=low, high=high)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.noise.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        first = True
        for key in self.key_iterator(d):
            d[key] = self.noise(d[key], randomize=first)
            first = False
        return d


class LandmarksToPointsd(MapTransform):
    """Pack ``nasion_x, nasion_y, tip_x, tip_y`` into ``d[points_key]``: ``[[[ny, nx], [ty, tx]]]``."""

    def __init__(self, points_key: str = "points"):
        super().__init__(keys=LANDMARK_KEYS)
        self.points_key = points_key

    def __call__(self, data):
        d = dict(data)
        nx, ny, tx, ty = (float(d[k]) for k in LANDMARK_KEYS)
        points = torch.tensor([[[ny, nx], [ty, tx]]], dtype=torch.float64)
        d[self.points_key] = MetaTensor(points, affine=torch.eye(3, dtype=torch.float64))  # 2D: 3x3 affine
        return d


class PointsToLandmarksd(MapTransform):
    """Unpack ``d[points_key]`` (after spatial transforms) back into the four landmark keys."""

    def __init__(self, points_key: str = "points"):
        super().__init__(keys=points_key)
        self.points_key = points_key

    def __call__(self, data):
        d = dict(data)
        (ny, nx), (ty, tx) = torch.as_tensor(d[self.points_key])[0].tolist()
        d.update(nasion_x=nx, nasion_y=ny, tip_x=tx, tip_y=ty)
        return d
