"""Does G-D's discriminator D tell real crops from generated ones? Measured on the validation crops after G-D.

``discriminator_check`` scores every validation crop X and its reconstruction G(X) with D and writes
``discriminator.json`` in the stage folder: the ROC AUC of D's "real" probability for real (positive) against
generated (negative) crops, D's mean probability on each, and the mean |G(X) - X|. An AUC near 0.5 means D gives
G-D-C steps 1 and 2 no signal: their L_D is then constant.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from monai.metrics import compute_roc_auc
from torch import nn

from .distributed import unwrap
from .masks import batched, load_crops

logger = logging.getLogger(__name__)


@torch.no_grad()
def discriminator_check(
    generator: nn.Module,
    discriminator: nn.Module,
    val_records: list[dict],
    out_dir: str | Path,
    device: str | torch.device = "cpu",
) -> dict:
    """D's ROC AUC real vs G(X) and mean probabilities on ``val_records``' crops; written to ``discriminator.json``."""
    generator, discriminator = unwrap(generator).eval(), unwrap(discriminator).eval()
    if not val_records:
        logger.warning("no validation crop: D's AUC real vs generated is not measured")
        return {"val_crops": 0}
    real, _ = load_crops(val_records)
    fake = batched(generator, real, device)
    p_real = batched(lambda b: torch.sigmoid(discriminator(b)), real, device)[:, 0]
    p_fake = batched(lambda b: torch.sigmoid(discriminator(b)), fake, device)[:, 0]
    scores = torch.cat([p_real, p_fake]).double()
    labels = torch.cat([torch.ones_like(p_real), torch.zeros_like(p_fake)]).double()
    result = {
        "split": "val",
        "val_crops": len(real),
        "roc_auc_real_vs_generated": float(compute_roc_auc(scores, labels)),
        "d_prob_real": float(p_real.mean()),
        "d_prob_generated": float(p_fake.mean()),
        "mean_abs_change": float((fake - real).abs().mean()),
    }
    logger.info(
        "G-D's D on %d validation crops: AUC real vs G(X) %.3f, D(real) %.3f, D(G(X)) %.3f",
        len(real),
        result["roc_auc_real_vs_generated"],
        result["d_prob_real"],
        result["d_prob_generated"],
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "discriminator.json").write_text(json.dumps(result, indent=2))
    return result
