"""MONAI-style transforms that MONAI itself lacks.

- ``RandSaltPepper``/``RandSaltPepperd``: set a fraction of pixels to the minimum or maximum value
  (the thesis's detector augmentation, 5% of pixels).
- ``RandToneCurve``/``RandToneCurved`` and ``RandUnsharpMask``/``RandUnsharpMaskd``: two ways X-ray devices
  differ (a film-like S-shaped tone curve; edge enhancement by unsharp masking), for training that should carry
  over to another site; ``tone_curve`` and ``unsharp_mask`` are the plain functions, which the detector's
  per-image augmentation (``scripts.detector_training.YoloDeviceAugment``) uses too.
- ``LandmarksToPointsd``/``PointsToLandmarksd``: carry the two landmarks through MONAI spatial
  transforms as a ``(1, 2, 2)`` points array in spatial-axis order (row y, column x), the form
  ``ApplyTransformToPointsd`` moves with the image's affine.

Every other augmentation of the thesis is a MONAI transform named in the stage configs:
``RandFlipd`` (horizontal flip: spatial axis 1), ``RandAffined`` (translation, rotation, zoom),
``RandScaleIntensityFixedMeand`` (contrast), ``RandScaleIntensityd`` (brightness); the classifier's site
augmentations add ``RandAdjustContrastd`` (gamma), ``RandShiftIntensityd`` (brightness) and ``RandLambdad``
(inversion, ``1 - x``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.networks.layers import separable_filtering
from monai.networks.layers.convutils import gaussian_1d
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


class _RandDictd(RandomizableTransform, MapTransform):
    """Dictionary version of the array transform ``self.array``: one draw per call, made by ``self.array`` on the
    first key present (so a draw that depends on the image, such as a noise pattern of its shape, can see it), then
    the same effect on every key."""

    array: RandomizableTransform

    def __init__(self, keys: KeysCollection, prob: float, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.array.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for i, key in enumerate(self.key_iterator(d)):
            d[key] = self.array(d[key], randomize=i == 0)
        return d


class RandSaltPepperd(_RandDictd):
    """Dictionary version of ``RandSaltPepper``; the same pixels are hit in every key."""

    def __init__(self, keys: KeysCollection, prob: float = 0.5, amount: float = 0.05, low=None, high=None, **kwargs):
        super().__init__(keys, prob, **kwargs)
        self.array = RandSaltPepper(prob=1.0, amount=amount, low=low, high=high)


def tone_curve(img: torch.Tensor, contrast: float, mid: float) -> torch.Tensor:
    """Film-like S-curve on [0, 1]: a logistic of slope ``contrast`` around ``mid``, rescaled so 0 -> 0 and 1 -> 1."""
    lo, hi = (1 / (1 + math.exp(-contrast * (v - mid))) for v in (0.0, 1.0))
    return (torch.sigmoid(contrast * (img - mid)) - lo) / (hi - lo)


def unsharp_mask(img: torch.Tensor, amount: float, sigma: float) -> torch.Tensor:
    """Edge enhancement of a channel-first image: ``img + amount * (img - blur(img))``, the blur a Gaussian of
    ``sigma`` pixels with the border replicated (MONAI's ``GaussianSmooth`` pads with zeros: a bright frame)."""
    kernel = gaussian_1d(torch.tensor(float(sigma)), truncated=4.0, normalize=True)
    blur = separable_filtering(img[None].float(), [kernel] * (img.ndim - 1), mode="replicate")[0]
    return img + amount * (img - blur.to(img.dtype))


def _range(values: Sequence[float], name: str, low: float = 0.0) -> tuple[float, float]:
    lo, hi = (float(v) for v in values)
    if not low < lo <= hi:
        raise ValueError(f"{name} must be a range [lo, hi] with {low} < lo <= hi, got {values}")
    return lo, hi


class _RandDrawnEffect(RandomizableTransform):
    """With probability ``prob``, ``effect(img, *values)`` with each value drawn uniformly from its range."""

    def __init__(self, prob: float, effect, ranges: dict[str, Sequence[float]], default: tuple[float, ...]) -> None:
        RandomizableTransform.__init__(self, prob)
        self.effect, self.ranges, self.value = effect, [_range(v, k) for k, v in ranges.items()], default

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if self._do_transform:
            self.value = tuple(self.R.uniform(*r) for r in self.ranges)

    def __call__(self, img, randomize: bool = True):
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        return self.effect(convert_to_tensor(img, track_meta=get_track_meta()), *self.value)


class RandToneCurve(_RandDrawnEffect):
    """With probability ``prob``, ``tone_curve`` with ``contrast`` and ``mid`` drawn uniformly from their ranges
    (an image in [0, 1]; the phantom's site B: contrast 3.5-5.5 around 0.45-0.55)."""

    def __init__(self, prob: float = 0.1, contrast: Sequence[float] = (1.0, 6.0), mid: Sequence[float] = (0.4, 0.6)):
        super().__init__(prob, tone_curve, {"contrast": contrast, "mid": mid}, (1.0, 0.5))


class RandUnsharpMask(_RandDrawnEffect):
    """With probability ``prob``, ``unsharp_mask`` with ``amount`` and ``sigma`` (pixels) drawn from their ranges."""

    def __init__(self, prob: float = 0.1, amount: Sequence[float] = (0.3, 1.5), sigma: Sequence[float] = (1.0, 3.0)):
        super().__init__(prob, unsharp_mask, {"amount": amount, "sigma": sigma}, (0.0, 1.0))


class RandToneCurved(_RandDictd):
    """Dictionary version of ``RandToneCurve``."""

    def __init__(self, keys: KeysCollection, prob: float = 0.1, contrast=(1.0, 6.0), mid=(0.4, 0.6), **kwargs):
        super().__init__(keys, prob, **kwargs)
        self.array = RandToneCurve(prob=1.0, contrast=contrast, mid=mid)


class RandUnsharpMaskd(_RandDictd):
    """Dictionary version of ``RandUnsharpMask``."""

    def __init__(self, keys: KeysCollection, prob: float = 0.1, amount=(0.3, 1.5), sigma=(1.0, 3.0), **kwargs):
        super().__init__(keys, prob, **kwargs)
        self.array = RandUnsharpMask(prob=1.0, amount=amount, sigma=sigma)


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
