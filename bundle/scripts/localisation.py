"""Measured fracture localisation: G-D-C step 1 and step 2 against Grad-CAM and occlusion sensitivity.

Every method gives a map in [0, 1] per crop (maximum = 1) and a binary region at a threshold chosen on the
VALIDATION split's fracture crops (maximum mean Dice with the ground-truth masks; ``masks.choose_threshold``):

- ``gdc1``: |G1(X) - X| of the step-1 generator, Gaussian-smoothed (``sigma``) and scaled;
- ``gdc2``: the step-2 generator's map as inference makes it (``masks.region_map``: the mode and threshold chosen on
  validation and stored in gdc2.pt);
- ``gdc2 abs``, ``gdc2 added``, ``gdc2 removed``: each mode of the step-2 map (``masks.MAP_MODES``), whichever was
  chosen, and ``gdc2 in step-1 region``: |G2(X) - X| kept only where step 1 changed the crop (|G1(X) - X| > the
  step-2 mask threshold), rows for comparing the choices;
- ``gradcam``: MONAI ``GradCAM`` of C's fracture logit at ``C.target_layer``, upsampled, scaled;
- ``occlusion``: MONAI ``OcclusionSensitivity`` of C: the drop of the fracture probability when a patch around
  each pixel is occluded, clipped at 0 and scaled.

Metrics on the TEST split's fracture crops, against the phantom's ground-truth region masks (each method's
pointing game on the validation crops is recorded too, ``val_pointing``: what a choice between methods may use):

- pointing game: the map's maximum lies inside the true region or within ``tolerance`` pixels of it (Euclidean);
- Dice and IoU of the binary region; energy share: sum(map * truth) / sum(map);
- each with a 95% bootstrap interval over crops.

Also C's mean fracture probability and D's mean "real" probability on the original and on the repaired
(G2(X)) test crops. Results: ``localisation.json``, ``localisation.md`` and ``cases.png`` (8 test crops).

``split="val"`` scores the validation crops instead (thresholds then chosen on the same crops): for choosing
between development variants without looking at the test split. Only ``split="test"`` gives reportable figures.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from .masks import (
    MAP_MODES,
    batched,
    change,
    choose_threshold,
    difference_map,
    generator_mask,
    load_crops,
    pointing_game,
    pointing_hit,
    region_overlap,
    scale01,
    smooth01,
)

logger = logging.getLogger(__name__)


def energy_share(rmap: np.ndarray, truth: np.ndarray) -> float:
    """Share of the map's total inside the true region (0 for an all-zero map)."""
    total = float(rmap.sum())
    return float(rmap[truth].sum()) / total if total > 0 else 0.0


def _bootstrap_ci(values: np.ndarray, n: int = 1000, seed: int = 0) -> list[float]:
    if len(values) == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(n, len(values)), replace=True).mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def score_maps(
    maps: np.ndarray, truths: np.ndarray, threshold: float, tolerance: int = 3, bootstrap: int = 1000
) -> dict:
    """Pointing game, Dice, IoU and energy share (means and 95% bootstrap intervals) of maps ``(N, H, W)``."""
    pairs = list(zip(maps, truths, strict=True))
    dice, iou = region_overlap(np.asarray(maps) >= threshold, truths)
    per = {"pointing": [float(pointing_hit(m, g, tolerance)) for m, g in pairs], "dice": dice, "iou": iou}
    per["energy"] = [energy_share(m, g) for m, g in pairs]
    out: dict = {"threshold": float(threshold)}
    for k, v in per.items():
        arr = np.asarray(v)
        out[k] = float(arr.mean()) if len(arr) else float("nan")
        out[f"{k}_ci95"] = _bootstrap_ci(arr, bootstrap)
    return out


def gradcam_maps(classifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MONAI Grad-CAM of the fracture logit at C's ``target_layer`` (``FractureClassifier.gradcam``), in [0, 1]."""
    return classifier.gradcam(x).float()


def occlusion_maps(
    classifier: nn.Module,
    x: torch.Tensor,
    mask_size: int = 16,
    overlap: float = 0.5,
    mode: str = "mean_patch",
    n_batch: int = 64,
) -> torch.Tensor:
    """Drop of C's fracture probability when occluding around each pixel (MONAI), clipped at 0, scaled to [0, 1]."""
    from monai.visualize import OcclusionSensitivity

    occ = OcclusionSensitivity(
        nn_module=classifier,
        mask_size=mask_size,
        n_batch=n_batch,
        mode=mode,
        overlap=overlap,
        activate=True,
        verbose=False,
    )
    out = []
    with torch.no_grad():
        probs = torch.sigmoid(classifier(x.float()))[:, 0]
        for i in range(x.shape[0]):
            occ_map = torch.as_tensor(occ(x[i : i + 1].float())[0])
            if occ_map.ndim == x.ndim + 1:  # a trailing class dimension
                occ_map = occ_map[..., 0]
            drop = (probs[i] - occ_map).clamp_min(0)
            out.append(drop.reshape(1, 1, *x.shape[-2:]))
    return scale01(torch.cat(out).float())


class Method:
    """A named localisation method: ``maps(x)`` on a batch, and its validation threshold."""

    def __init__(self, name: str, fn, threshold: float | None = None, info: dict | None = None) -> None:
        self.name, self.fn, self.threshold, self.info = name, fn, threshold, dict(info or {})

    def maps(self, x: torch.Tensor, device, batch_size: int = 16) -> np.ndarray:
        return batched(self.fn, x, device, batch_size)[:, 0].numpy()


def _overlay(img: np.ndarray, truth: np.ndarray | None = None, heat: np.ndarray | None = None) -> np.ndarray:
    import matplotlib

    rgb = np.repeat(np.clip(img, 0, 1)[..., None], 3, axis=2)
    if heat is not None:
        colour = matplotlib.colormaps["inferno"](np.clip(heat, 0, 1))[..., :3]
        rgb = 0.45 * rgb + 0.55 * colour
    if truth is not None and truth.any():
        edge = truth & ~ndimage.binary_erosion(truth)
        rgb[edge] = (0.1, 1.0, 0.2)
    return rgb


def case_figure(
    path: Path,
    images: np.ndarray,
    truths: np.ndarray,
    columns: dict[str, np.ndarray],
    repaired: np.ndarray | None,
    rows: list[int],
) -> Path:
    """One row per crop: input, truth, repaired (G2), then each method's map (truth outlined in green)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = ["input", "truth"] + (["repaired (G2)"] if repaired is not None else []) + list(columns)
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(1.6 * len(titles), 1.6 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        tiles = [_overlay(images[i]), _overlay(images[i], truths[i])]
        if repaired is not None:
            tiles.append(_overlay(repaired[i]))
        tiles += [_overlay(images[i], truths[i], m[i]) for m in columns.values()]
        for c, tile in enumerate(tiles):
            ax = axes[r, c]
            ax.imshow(tile, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(result: dict) -> str:
    """The methods table and the repaired-crop scores as markdown."""
    split = result.get("split", "test")
    scored = "Test" if split == "test" else "VALIDATION (development only; thresholds chosen on the same crops)"
    lines = [
        f"{scored} fracture crops: {result['test_crops']} (validation: {result['val_crops']}); pointing tolerance "
        f"{result['pointing_tolerance_px']} px; 95% bootstrap intervals.",
        "",
        "| method | pointing game | Dice | IoU | energy in region | threshold (val) | pointing game (val) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in result["methods"].items():

        def cell(k, m=m):
            lo, hi = m[f"{k}_ci95"]
            return f"{m[k]:.3f} [{lo:.2f}, {hi:.2f}]"

        lines.append(
            f"| {name} | {cell('pointing')} | {cell('dice')} | {cell('iou')} | {cell('energy')} | "
            f"{m['threshold']:.2f} | {m.get('val_pointing', float('nan')):.3f} |"
        )
    lines += [
        "",
        "| G-D-C step 2 | C fracture prob. original | C fracture prob. repaired | D real prob. original | "
        "D real prob. repaired | mean abs change |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["repaired"].items():
        lines.append(
            f"| {name} | {r['c_prob_original']:.3f} | {r['c_prob_repaired']:.3f} | {r['d_prob_original']:.3f} | "
            f"{r['d_prob_repaired']:.3f} | {r['mean_abs_change']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def _generator_method(
    name: str, generator: nn.Module, sigma: float, threshold: float | None, info: dict, mode: str = "abs"
) -> Method:
    generator.eval()
    return Method(name, lambda b: difference_map(generator, b, sigma, mode), threshold, info)


def _restricted_method(name: str, g2: nn.Module, g1: nn.Module, sigma: float, step1_threshold: float) -> Method:
    """|G2(X) - X| only where step 1 changed the crop (|G1(X) - X| > ``step1_threshold``, step 2's mask)."""
    g1.eval()
    g2.eval()

    def fn(b: torch.Tensor) -> torch.Tensor:
        return smooth01(change(g2(b) - b) * generator_mask(b, g1, step1_threshold), sigma)

    return Method(name, fn, None, {"step1_threshold": step1_threshold})


def evaluate(
    crops_csv: str | Path,
    out_dir: str | Path,
    classifier: nn.Module,
    discriminator: nn.Module,
    gdc1_weights: str | Path,
    gdc2_weights: str | Path,
    device: str | torch.device = "cpu",
    variants: dict | None = None,
    tolerance: int = 3,
    occlusion: dict | None = None,
    n_cases: int = 8,
    bootstrap: int = 1000,
    baselines: bool = True,
    seed: int = 0,
    default_threshold: float = 0.5,
    split: str = "test",
) -> dict:
    """Run every method on the validation and test fracture crops; write json, markdown table and case figure.

    ``classifier`` is C (``FractureClassifier`` interface: logits, ``target_layer``), ``discriminator`` the G-D D.

    ``variants``: extra G-D-C runs to compare, ``{label: {"gdc1": path, "gdc2": path}}`` (e.g. the other mask
    polarity); the main run is labelled with the polarity stored in its checkpoint.
    """
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got '{split}'")
    from .crops import crop_records
    from .masks import region_model
    from .networks import freeze, load_networks

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classifier, discriminator = freeze(classifier), freeze(discriminator)
    val_x, val_t = load_crops([r for r in crop_records(crops_csv, "val", label=1) if r["mask"]])
    test_x, test_t = load_crops([r for r in crop_records(crops_csv, split, label=1) if r["mask"]])
    logger.info(
        "localisation: %d validation fracture crops, %d %s fracture crops scored", len(val_x), len(test_x), split
    )
    if split == "val":
        logger.warning("localisation scored on the VALIDATION split: for development choices, not for reporting")
    if len(test_x) == 0:
        raise ValueError(f"{crops_csv}: no {split} fracture crop with a ground-truth mask to measure localisation on")

    runs = {"": {"gdc1": gdc1_weights, "gdc2": gdc2_weights}, **(variants or {})}
    methods: list[Method] = []
    step2: dict[str, nn.Module] = {}
    for label, paths in runs.items():
        g2_nets, g2_info = load_networks(paths["gdc2"], device)
        g2 = region_model(g2_nets, g2_info, paths["gdc2"])
        g1_nets, g1_info = load_networks(paths["gdc1"], device)
        tag = label or g1_info.get("mask_polarity", "main")
        sigma, g1 = g2.region["sigma"], g1_nets["generator"]
        methods.append(_generator_method(f"gdc1[{tag}]", g1, sigma, None, g1_info))
        shipped = g2.region.get("mode", "abs")
        methods.append(_generator_method(f"gdc2[{tag}]", g2, sigma, g2.region["threshold"], g2.region, shipped))
        methods += [_generator_method(f"gdc2[{tag}] {mode}", g2, sigma, None, {}, mode) for mode in MAP_MODES]
        step1_threshold = float(g2_info.get("mask_threshold", 0.06))
        methods.append(_restricted_method(f"gdc2[{tag}] in step-1 region", g2, g1, sigma, step1_threshold))
        step2[f"gdc2[{tag}]"] = g2
    if baselines:
        occ = {"mask_size": 16, "overlap": 0.5, "mode": "mean_patch", "n_batch": 64, **(occlusion or {})}
        methods.append(Method("gradcam", lambda b: gradcam_maps(classifier, b)))
        methods.append(Method("occlusion", lambda b: occlusion_maps(classifier, b, **occ), info=occ))

    result: dict = {
        "split": split,
        "test_crops": len(test_x),
        "val_crops": len(val_x),
        "pointing_tolerance_px": tolerance,
        "methods": {},
        "repaired": {},
    }
    test_maps: dict[str, np.ndarray] = {}
    for method in methods:
        val_maps = method.maps(val_x, device) if len(val_x) else None
        if method.threshold is None and val_maps is not None:
            method.threshold, method.info["val_dice"] = choose_threshold(val_maps, val_t)
        elif method.threshold is None:
            logger.warning(
                "%s: no validation fracture crop, binary threshold set to %s", method.name, default_threshold
            )
            method.threshold = default_threshold
        test_maps[method.name] = method.maps(test_x, device)
        result["methods"][method.name] = score_maps(
            test_maps[method.name], test_t, method.threshold, tolerance, bootstrap
        )
        result["methods"][method.name]["val_pointing"] = (
            pointing_game(val_maps, val_t, tolerance) if val_maps is not None else float("nan")
        )
        logger.info(
            "%s: %s",
            method.name,
            {k: round(v, 3) for k, v in result["methods"][method.name].items() if isinstance(v, float)},
        )

    repaired_first = None
    for name, g2 in step2.items():
        g2.eval()
        repaired = batched(g2, test_x, device)
        c_orig = batched(lambda b: torch.sigmoid(classifier(b)), test_x, device)
        c_rep = batched(lambda b: torch.sigmoid(classifier(b)), repaired, device)
        d_orig = batched(lambda b: torch.sigmoid(discriminator(b)), test_x, device)
        d_rep = batched(lambda b: torch.sigmoid(discriminator(b)), repaired, device)
        result["repaired"][name] = {
            "c_prob_original": float(c_orig.mean()),
            "c_prob_repaired": float(c_rep.mean()),
            "d_prob_original": float(d_orig.mean()),
            "d_prob_repaired": float(d_rep.mean()),
            "mean_abs_change": float((repaired - test_x).abs().mean()),
        }
        if repaired_first is None:
            repaired_first = repaired[:, 0].numpy()

    (out / "localisation.json").write_text(json.dumps(result, indent=2))
    (out / "localisation.md").write_text(markdown_table(result))
    rows = list(np.random.default_rng(seed).choice(len(test_x), size=min(n_cases, len(test_x)), replace=False))
    case_figure(
        out / "cases.png", test_x[:, 0].numpy(), test_t, test_maps, repaired_first, sorted(int(r) for r in rows)
    )
    return result


def log_to_mlflow(
    result: dict,
    out_dir: str | Path,
    tracking_uri: str | None,
    experiment_name: str,
    run_name: str,
    log_images: bool = False,
) -> None:
    """Log every method's metrics (``<method>/<metric>``) and the table into the open run ``run_name`` (the stage's
    nested run in the chained pipeline, as ``MLFlowHandler`` finds it), else into a run of its own; the figure of test
    crops (``cases.png``) only with ``log_images``."""
    if not tracking_uri:
        return
    from .tracking import Tracker

    tracker = Tracker(tracking_uri, experiment_name)
    run_id, started = tracker.open_or_start(run_name)
    groups = [*result["methods"].items(), *result["repaired"].items()]
    tracker.metrics(
        run_id,
        {
            f"{m}/{k}".replace("[", "_").replace("]", ""): v
            for m, vals in groups
            for k, v in vals.items()
            if isinstance(v, float)
        },
    )
    for name in ("localisation.json", "localisation.md", *(("cases.png",) if log_images else ())):
        tracker.artifact(run_id, Path(out_dir) / name)
    if started:
        tracker.end(run_id)
