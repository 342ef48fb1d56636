"""The thesis's G-D and G-D-C losses as plain functions (bound with ``functools.partial`` in the configs).

Notation: X the input crop, G(X) the generator's output, D the discriminator (logit; ``D.features`` is D_feat),
C the fracture classifier (logit, 1 = fracture), M the mask in [0, 1], BCE the binary cross entropy of a logit
against a constant target (real = 1, fake = 0; fracture = 1, normal = 0), |.| the mean absolute value and MSE the
mean squared error. Every function returns a dict of tensors: ``"loss"`` (what is back-propagated) and each named
term, unweighted, so that each term can be logged separately.

Stage 3 (G-D), the thesis's equations:
    L_G = L_adv,G + 40 L_con + L_lat        L_adv,G = BCE(1, D(G(X)))   L_con = |X - G(X)|
    L_D = L_adv,D + L_lat                   L_adv,D = BCE(1, D(X)) + BCE(0, D(G(X)))
    L_lat = MSE(D_feat(X), D_feat(G(X)))

Stages 4 and 5 (G-D-C), with C and D frozen:
    L = 80 L_G + L_D + 4 L_C    L_D = BCE(1, D(G(Adjust(X))))    L_C = BCE(0, C(Adjust(X)))

Mask polarity (SPEC, note on Adjust):
- ``"intent"`` (default): Adjust(X) = (1 - M) X + M G(X) and L_G = |(1 - M)(X - G(X))|: G may change the image only
  where M is high (the suspected fracture), so C's answer cannot be flipped by edits elsewhere.
- ``"literal"``: as printed in the thesis, Adjust(X) = X M + (1 - M) G(X) and L_G = |M X - M G(X)|: X is kept
  where M is high and G's output is used elsewhere.

L_D as printed applies G a second time, to Adjust(X) (``d_input="generated_adjust"``); ``d_input="adjust"``
scores Adjust(X) itself (one generator pass fewer).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

POLARITIES = ("intent", "literal")
D_INPUTS = ("generated_adjust", "adjust")


def bce_to(logits: torch.Tensor, target: float) -> torch.Tensor:
    """BCE of ``sigmoid(logits)`` against the constant ``target`` (computed stably from the logits)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(target)))


def gd_generator_loss(
    x: torch.Tensor,
    fake: torch.Tensor,
    d_net,
    adv_weight: float = 1.0,
    con_weight: float = 40.0,
    lat_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """L_G = adv_weight L_adv,G + con_weight L_con + lat_weight L_lat (gradients reach G through ``fake``)."""
    feat_fake, logit_fake = d_net(fake, with_features=True)  # D is called, never its methods: it may be in DDP
    with torch.no_grad():
        feat_real, _ = d_net(x, with_features=True)
    adv = bce_to(logit_fake, 1.0)
    con = torch.mean(torch.abs(x - fake))
    lat = F.mse_loss(feat_fake, feat_real)
    return {"loss": adv_weight * adv + con_weight * con + lat_weight * lat, "adv_g": adv, "con": con, "lat_g": lat}


def gd_discriminator_loss(
    x: torch.Tensor, fake: torch.Tensor, d_net, adv_weight: float = 1.0, lat_weight: float = 1.0
) -> dict[str, torch.Tensor]:
    """L_D = adv_weight L_adv,D + lat_weight L_lat (``fake`` is detached: only D learns from this loss)."""
    feat_real, logit_real = d_net(x, with_features=True)
    feat_fake, logit_fake = d_net(fake.detach(), with_features=True)
    adv = bce_to(logit_real, 1.0) + bce_to(logit_fake, 0.0)
    lat = F.mse_loss(feat_fake, feat_real)
    return {"loss": adv_weight * adv + lat_weight * lat, "adv_d": adv, "lat_d": lat}


def adjust(x: torch.Tensor, fake: torch.Tensor, mask: torch.Tensor, polarity: str = "intent") -> torch.Tensor:
    """Adjust(X): ``(1 - M) X + M G(X)`` (intent) or ``X M + (1 - M) G(X)`` (literal)."""
    if polarity == "intent":
        return (1.0 - mask) * x + mask * fake
    if polarity == "literal":
        return x * mask + (1.0 - mask) * fake
    raise ValueError(f"mask polarity must be one of {POLARITIES}, got '{polarity}'")


def masked_l1(x: torch.Tensor, fake: torch.Tensor, mask: torch.Tensor, polarity: str = "intent") -> torch.Tensor:
    """L_G: ``|(1 - M)(X - G(X))|`` (intent) or ``|M X - M G(X)|`` (literal), mean over every pixel."""
    if polarity == "intent":
        return torch.mean(torch.abs((1.0 - mask) * (x - fake)))
    if polarity == "literal":
        return torch.mean(torch.abs(mask * x - mask * fake))
    raise ValueError(f"mask polarity must be one of {POLARITIES}, got '{polarity}'")


def gdc_loss(
    x: torch.Tensor,
    fake: torch.Tensor,
    mask: torch.Tensor,
    g_net: Callable,
    d_net,
    c_net,
    g_weight: float = 80.0,
    d_weight: float = 1.0,
    c_weight: float = 4.0,
    polarity: str = "intent",
    d_input: str = "generated_adjust",
) -> dict[str, torch.Tensor]:
    """L = g_weight L_G + d_weight L_D + c_weight L_C of G-D-C steps 1 and 2 (D and C are frozen by the caller).

    ``g_net`` is needed only for ``d_input="generated_adjust"`` (L_D = BCE(1, D(G(Adjust(X)))), as printed).
    Also returns ``"adjusted"`` (Adjust(X), for sample images).
    """
    if d_input not in D_INPUTS:
        raise ValueError(f"d_input must be one of {D_INPUTS}, got '{d_input}'")
    adjusted = adjust(x, fake, mask, polarity)
    l_g = masked_l1(x, fake, mask, polarity)
    l_d = bce_to(d_net(g_net(adjusted) if d_input == "generated_adjust" else adjusted), 1.0)
    l_c = bce_to(c_net(adjusted), 0.0)
    loss = g_weight * l_g + d_weight * l_d + c_weight * l_c
    return {"loss": loss, "l_g": l_g, "l_d": l_d, "l_c": l_c, "adjusted": adjusted}
