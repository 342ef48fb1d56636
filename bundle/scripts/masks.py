"""Masks of the G-D-C stages and the fracture-region map they produce.

- ``classifier_mask`` (step 1): M(X) from C's last convolutional layer (``classifier.target_layer``), upsampled
  to the crop and min-max scaled to [0, 1] per image. ``mode="cam"`` (default) is the positive part of the
  class-weighted map, ReLU(sum_k w_k A_k) with w_k = the mean over positions of d(fracture logit)/dA_k (for C's
  global-average-pool + linear head these are the FC weights divided by the number of positions: the classic
  CAM, and the same map as Grad-CAM at that layer); ``mode="channel_mean"`` is the plain mean of the layer's
  channels (class-agnostic).
- ``generator_mask`` (step 2): M(X) = 1 where |G1(X) - X| > threshold (0.06 in the thesis), else 0.
- ``difference_map`` / ``region_map``: the fracture-region map of a crop, the repair's change smoothed with a
  Gaussian and scaled to [0, 1] per crop (maximum = 1; a crop the generator leaves unchanged maps to 0), and its
  binary region at the threshold chosen on the validation split (``choose_threshold``: maximum mean Dice),
  stored in the step-2 checkpoint (``info["region"]``). The change is one of ``MAP_MODES``: ``abs``, the thesis's
  |G(X) - X|; ``added``, only the density the repair adds, max(G(X) - X, 0); ``removed``, only the density it
  takes away, max(X - G(X), 0). ``calibrate_region`` picks the mode among the configured candidates by the
  pointing game on the validation fracture crops (``pointing_hit``), then its threshold by Dice.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice, compute_iou
from monai.networks.layers import GaussianFilter
from monai.transforms.utils import rescale_array
from scipy import ndimage
from torch import nn

from .checkpoint import CheckpointError
from .distributed import unwrap
from .networks import load_networks, save_networks

logger = logging.getLogger(__name__)
MASK_MODES = ("cam", "channel_mean")
MAP_MODES = ("abs", "added", "removed")


def scale01(x: torch.Tensor) -> torch.Tensor:
    """Min-max scale each item of a batch to [0, 1] (MONAI ``rescale_array``); a constant item becomes 0."""
    return torch.stack([rescale_array(item, 0.0, 1.0, dtype=None) for item in x]) if len(x) else x


def last_conv_activation(classifier: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """C's ``target_layer`` output ``A`` (B, K, h, w) and d(fracture logit)/dA, from one forward pass.

    The layer's output is swapped for a detached leaf by a forward hook, so the backward pass runs only through
    C's head (pooling and the linear layer), whatever C's ``requires_grad`` flags.
    """
    layer = dict(classifier.named_modules())[classifier.target_layer]
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = classifier(x.detach())
            (grad,) = torch.autograd.grad(logits[:, 0].sum(), captured[0])
    finally:
        handle.remove()
    return captured[0].detach(), grad


def classifier_mask(x: torch.Tensor, classifier: nn.Module, mode: str = "cam") -> torch.Tensor:
    """M(X) of G-D-C step 1: ``(B, 1, H, W)`` in [0, 1] from C's last convolutional layer (see the module doc)."""
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got '{mode}'")
    act, grad = last_conv_activation(classifier, x)
    if mode == "cam":
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * act).sum(1, keepdim=True))
    else:
        cam = act.mean(1, keepdim=True)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return scale01(cam)


@torch.no_grad()
def generator_mask(x: torch.Tensor, generator: nn.Module, threshold: float = 0.06) -> torch.Tensor:
    """M(X) of G-D-C step 2: 1 where ``|G1(X) - X| > threshold``, else 0 (``generator`` is the step-1 G)."""
    return (torch.abs(generator(x) - x) > threshold).to(x.dtype)


def smooth01(diff: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing (``sigma`` pixels; 0 = none) then per-crop scaling to [0, 1] (maximum = 1)."""
    if sigma > 0:
        diff = GaussianFilter(spatial_dims=2, sigma=sigma).to(diff.device)(diff)
    peak = diff.flatten(1).max(1).values.view(-1, *([1] * (diff.ndim - 1)))
    return torch.where(peak > 0, diff / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(diff))


def change(diff: torch.Tensor, mode: str = "abs") -> torch.Tensor:
    """The part of the repair's change ``diff = G(X) - X`` that a map of ``mode`` (``MAP_MODES``) shows."""
    if mode == "abs":
        return diff.abs()
    if mode == "added":
        return diff.clamp_min(0)
    if mode == "removed":
        return (-diff).clamp_min(0)
    raise ValueError(f"map mode must be one of {MAP_MODES}, got '{mode}'")


@torch.no_grad()
def difference_map(generator: nn.Module, x: torch.Tensor, sigma: float = 2.0, mode: str = "abs") -> torch.Tensor:
    """The change of ``mode`` (``abs``: ``|G(X) - X|``) smoothed and scaled to [0, 1] per crop: ``(B, 1, H, W)``."""
    return smooth01(change(generator(x) - x, mode), sigma)


def pointing_hit(rmap: np.ndarray, truth: np.ndarray, tolerance: int = 3) -> bool:
    """Whether the map's maximum (first in row-major order) lies within ``tolerance`` px (Euclidean) of ``truth``."""
    if not truth.any():
        return False
    r, c = np.unravel_index(int(np.argmax(rmap)), rmap.shape)
    return bool(ndimage.distance_transform_edt(~truth)[r, c] <= tolerance)


def pointing_game(maps: np.ndarray, truths: np.ndarray, tolerance: int = 3) -> float:
    """Share of maps ``(N, H, W)`` whose maximum hits their truth (``pointing_hit``); NaN for none."""
    hits = [pointing_hit(m, t, tolerance) for m, t in zip(maps, truths, strict=True)]
    return float(np.mean(hits)) if hits else float("nan")


def region_overlap(binary: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-item Dice and IoU of boolean arrays ``(N, H, W)`` (MONAI ``compute_dice``/``compute_iou``; both empty: 1)."""
    pred, true = (torch.as_tensor(np.asarray(a, dtype=bool))[:, None] for a in (binary, truth))
    if len(pred) == 0:
        return np.zeros(0), np.zeros(0)
    dice = compute_dice(pred, true, include_background=True, ignore_empty=False)
    iou = compute_iou(pred, true, include_background=True, ignore_empty=False)
    return dice[:, 0].double().numpy(), iou[:, 0].double().numpy()


def dice_iou(binary: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean arrays (both empty: 1, 1)."""
    dice, iou = region_overlap(np.asarray(binary)[None], np.asarray(truth)[None])
    return float(dice[0]), float(iou[0])


def choose_threshold(maps: np.ndarray, truths: np.ndarray, candidates=None) -> tuple[float, float]:
    """The threshold on [0, 1] maps ``(N, H, W)`` that maximises the mean Dice with ``truths``; ``(t, dice)``."""
    candidates = np.round(np.arange(0.05, 0.951, 0.05), 3) if candidates is None else np.asarray(candidates)
    best = (float(candidates[0]), -1.0)
    for t in candidates:
        dice = float(np.mean(region_overlap(np.asarray(maps) >= t, truths)[0])) if len(maps) else float("nan")
        if dice > best[1]:
            best = (float(t), dice)
    return best


def load_region_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The step-2 generator of ``gdc2.pt`` with its stored region settings as ``.region`` (threshold, sigma)."""
    return region_model(*load_networks(path, device), path)


def region_model(nets: dict[str, nn.Module], info: dict, path: str | Path) -> nn.Module:
    """``load_region_model`` for networks already loaded from ``path`` (``networks.load_networks``)."""
    generator = nets["generator"]
    if "region" not in info:
        raise CheckpointError(f"{path}: no region threshold stored (was G-D-C step 2 calibrated on validation?)")
    generator.region = dict(info["region"])
    return generator


@torch.no_grad()
def region_map(
    gdc2_generator: nn.Module, crop_batch: torch.Tensor, threshold: float | None = None, sigma: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fracture-region map ``(B, 1, H, W)`` in [0, 1] and its binary region, for crops ``(B, 1, H, W)`` in [0, 1].

    ``threshold``/``sigma`` default to those stored with the generator (``load_region_model``), the map's mode is
    the stored one (``abs`` for a checkpoint that stores none).
    """
    stored = getattr(gdc2_generator, "region", {})
    threshold = stored["threshold"] if threshold is None else threshold
    sigma = stored.get("sigma", 2.0) if sigma is None else sigma
    was_training = gdc2_generator.training
    gdc2_generator.eval()
    try:
        rmap = difference_map(gdc2_generator, crop_batch, sigma, stored.get("mode", "abs"))
    finally:
        gdc2_generator.train(was_training)
    return rmap, rmap >= threshold


def load_crops(records: list[dict]) -> tuple[torch.Tensor, np.ndarray]:
    """Crops ``(N, 1, H, W)`` in [0, 1] and their ground-truth masks ``(N, H, W)`` bool (all False if no mask)."""
    from PIL import Image

    from .imageio import load_xray

    if not records:
        return torch.zeros(0, 1, 0, 0), np.zeros((0, 0, 0), bool)
    images = np.stack([load_xray(r["image"], intensity="stored") for r in records]).astype(np.float32)
    truths = np.stack(
        [
            np.asarray(Image.open(r["mask"]).convert("L")) > 127 if r.get("mask") else np.zeros(images.shape[1:], bool)
            for r in records
        ]
    )
    return torch.from_numpy(images)[:, None], truths


@torch.no_grad()
def batched(fn, x: torch.Tensor, device: str | torch.device = "cpu", batch_size: int = 16) -> torch.Tensor:
    """``fn`` over ``x`` in batches on ``device``; the result back on the CPU."""
    return torch.cat([fn(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


def calibrate_region(
    generator: nn.Module,
    val_records: list[dict],
    sigma: float = 2.0,
    device: str | torch.device = "cpu",
    default_threshold: float = 0.5,
    modes: tuple[str, ...] | list[str] = ("abs",),
    tolerance: int = 3,
) -> dict:
    """The region map's mode and threshold, chosen on validation fracture crops.

    The mode among ``modes`` whose maps point best (``pointing_game`` within ``tolerance`` px; a tie goes to the
    earlier mode), then the threshold of its map with the maximum mean Dice with the crops' masks. Without any
    validation crop with a mask (real data has none), the first mode and ``default_threshold`` are stored, with
    ``val_crops = 0`` and ``threshold_source = "default"`` saying so.
    """
    modes = [str(m) for m in modes]
    if not modes or any(m not in MAP_MODES for m in modes):
        raise ValueError(f"region map modes must be a non-empty list of {MAP_MODES}, got {modes}")
    records = [r for r in val_records if r.get("mask")]
    if not records:
        logger.warning("no validation crop with a ground-truth mask: region threshold set to %s", default_threshold)
        return {
            "mode": modes[0],
            "threshold": float(default_threshold),
            "sigma": float(sigma),
            "val_dice": None,
            "val_crops": 0,
            "threshold_source": "default",
        }
    images, truths = load_crops(records)
    generator.eval()
    diffs = batched(lambda b: generator(b) - b, images, device)
    maps = {m: smooth01(change(diffs, m), sigma)[:, 0].numpy() for m in modes}
    pointing = {m: pointing_game(maps[m], truths, tolerance) for m in modes}
    mode = max(modes, key=lambda m: (pointing[m], -modes.index(m)))
    threshold, dice = choose_threshold(maps[mode], truths)
    logger.info("region map: %s (validation pointing %s), threshold %.2f (Dice %.3f)", mode, pointing, threshold, dice)
    return {
        "mode": mode,
        "threshold": threshold,
        "sigma": float(sigma),
        "val_dice": dice,
        "val_pointing": pointing,
        "pointing_tolerance_px": int(tolerance),
        "val_crops": len(records),
        "threshold_source": "validation",
    }


def save_region_model(
    path: str | Path,
    generator: nn.Module,
    val_records: list[dict],
    sigma: float = 2.0,
    device: str | torch.device = "cpu",
    info: dict | None = None,
    modes: tuple[str, ...] | list[str] = ("abs",),
    tolerance: int = 3,
) -> Path:
    """Choose the region map's mode and threshold on validation (``calibrate_region``) and write the step-2
    checkpoint (``info["region"]``); a DDP generator's module runs in this process alone."""
    generator = unwrap(generator)
    region = calibrate_region(generator, val_records, sigma, device, modes=modes, tolerance=tolerance)
    return save_networks(path, info={**(info or {}), "region": region}, generator=generator)
