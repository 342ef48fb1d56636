"""Training seconds per epoch of each stage against the dataset size (250, 500 and 1,000 images).

Affordable on a 2-core CPU: each stage's training iteration (its networks as the profile builds them, on a batch of
the profile's size) is timed for a fixed number of iterations on stand-in data; an epoch over N images is then
``ceil(0.8 N / batch)`` iterations (the 80% training split). The iteration's cost does not depend on N, so the
columns grow linearly by construction; what this leaves out (data loading, augmentation, validation, checkpoints)
is stated with the table. Stages: the detector (forward, backward and an Adam step of the YOLO model), classifier C,
G-D (G's step with D's forward on the generated crops, and D's step on real and generated crops), G-D-C step 1
(G's step with frozen C and D; C's CAM mask), G-D-C step 2 (G's step with frozen C, D and step 1's G for the mask).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from .networks import _loss, _parser, build
from .stats import summary, timings

SIZES = (250, 500, 1000)


def _step(trainable: list[torch.nn.Module], frozen: list[torch.nn.Module], x: torch.Tensor, mask_grad: bool):
    optimisers = [torch.optim.Adam(m.parameters(), lr=1e-4) for m in trainable]

    def step() -> None:
        for opt in optimisers:
            opt.zero_grad(set_to_none=True)
        if mask_grad:  # the step-1 mask needs C's gradient at its last layer: one more forward and backward of C
            probe = x.clone().requires_grad_(True)
            _loss(frozen[0](probe)).backward()
        with torch.no_grad():
            for f in frozen[1 if mask_grad else 0 :]:
                f(x)
        out = trainable[0](x)
        loss = _loss(out)
        for f in [*frozen, *trainable[1:]]:  # C, D (and D in G-D) read the generated crop
            loss = loss + _loss(f(out))
        loss.backward()
        for extra in trainable[1:]:  # D's own step on real and generated crops
            _loss(extra(x) + extra(out.detach())).backward()
        for opt in optimisers:
            opt.step()

    return step


def stage_iterations(profile: str = "quick", iterations: int = 2) -> dict[str, dict[str, Any]]:
    """Seconds per training iteration of each stage (median of ``iterations`` after one warm-up) and its batch."""
    nets = {n.name: n for n in build(profile)}
    gd = _parser(profile, ("crop_training.yaml", "gan_common.yaml", "gd.yaml"))
    discriminator = gd.get_parsed_content("discriminator_def")
    g_batch = int(gd.get_parsed_content("gd")["batch_size"])
    gdc_batch = {s: int(gd.get_parsed_content(s)["batch_size"]) for s in ("gdc1", "gdc2")}
    crop = nets["generator"].shape
    det, cls, gen = nets["detector"], nets["classifier"], nets["generator"]

    def frozen(module: torch.nn.Module) -> torch.nn.Module:
        module = copy.deepcopy(module).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return module

    plans = {
        "detector": ([copy.deepcopy(det.module).train()], [], det.train_batch, det.shape, False),
        "classifier": ([copy.deepcopy(cls.module).train()], [], cls.train_batch, cls.shape, False),
        "gd": ([copy.deepcopy(gen.module).train(), copy.deepcopy(discriminator).train()], [], g_batch, crop, False),
        "gdc1": (
            [copy.deepcopy(gen.module).train()],
            [frozen(cls.module), frozen(discriminator)],
            gdc_batch["gdc1"],
            crop,
            True,
        ),
        "gdc2": (
            [copy.deepcopy(gen.module).train()],
            [frozen(cls.module), frozen(discriminator), frozen(gen.module)],
            gdc_batch["gdc2"],
            crop,
            False,
        ),
    }
    out = {}
    for stage, (trainable, fixed, batch, shape, mask_grad) in plans.items():
        x = torch.rand(batch, *shape)
        seconds = timings(_step(trainable, fixed, x, mask_grad), iterations, warmup=1)
        out[stage] = {"batch": batch, "seconds_per_iteration": summary(seconds)}
    return out


def epochs(iterations: dict[str, dict[str, Any]], sizes: tuple[int, ...] = SIZES) -> dict[str, dict[str, float]]:
    """Seconds per epoch of each stage for each dataset size (80% of it trains)."""
    table = {}
    for stage, it in iterations.items():
        per_it = it["seconds_per_iteration"]["median"]
        table[stage] = {str(n): math.ceil(0.8 * n / it["batch"]) * per_it for n in sizes}
    return table
