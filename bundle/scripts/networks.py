"""The generator G and the discriminator D of the G-D and G-D-C stages, and their self-describing checkpoints.

- ``Generator``: MONAI ``BasicUNet`` (2D, 1 channel in and out, skip connections: the thesis's "Skip-UNet")
  whose output is squashed to ``[0, 1]`` by a sigmoid, like the crops it reads.
- ``Discriminator``: a small CNN of stride-2 MONAI ``Convolution`` blocks, pooled to a fixed grid, then one
  fully connected layer, ``features(x)`` (the thesis's D_feat, the FC layer before the output), then the
  real/fake logit (``forward``). No batch norm and no dropout, so a frozen D gives the same answer in
  train and eval mode; adaptive pooling makes it independent of the crop size.

A checkpoint file (``checkpoint.GAN_FORMAT``, see ``checkpoint.py``) holds, per network, its constructor args and
``state_dict`` under the network's name (``"generator"``, ``"discriminator"``), plus a plain ``info`` dict;
``load_networks`` rebuilds them without reading any config.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import BasicUNet
from torch import nn

from . import checkpoint
from .distributed import unwrap

logger = logging.getLogger(__name__)


class Generator(nn.Module):
    """``BasicUNet`` + sigmoid: ``(B, 1, H, W)`` in [0, 1] -> ``(B, 1, H, W)`` in [0, 1] (H, W multiples of 16).

    ``residual=True`` adds one more skip connection, from the input to the output, in logit space:
    ``G(X) = sigmoid(logit(X) + UNet(X))``, with the U-Net's last convolution initialised to zero, so that a new
    generator is the identity (up to clamping ``X`` to ``[eps, 1 - eps]``) and learns only the change. The
    thesis's Skip-UNet is ``residual=False``.
    """

    def __init__(
        self,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        norm: str = "instance",
        upsample: str = "deconv",
        residual: bool = False,
        eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.config = {
            "features": [int(f) for f in features],
            "norm": norm,
            "upsample": upsample,
            "residual": bool(residual),
            "eps": float(eps),
        }
        norm_arg = ("instance", {"affine": True}) if norm == "instance" else norm
        self.unet = BasicUNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            features=tuple(self.config["features"]),
            norm=norm_arg,
            upsample=upsample,
        )
        if residual:
            nn.init.zeros_(self.unet.final_conv.weight)
            nn.init.zeros_(self.unet.final_conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.unet(x)
        if self.config["residual"]:
            eps = self.config["eps"]
            out = out + torch.logit(x.clamp(eps, 1.0 - eps))
        return torch.sigmoid(out)


class Discriminator(nn.Module):
    """Stride-2 conv blocks -> adaptive average pool to ``pool x pool`` -> FC ``feature_dim`` (D_feat) -> logit."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 128), pool: int = 4, feature_dim: int = 128) -> None:
        super().__init__()
        self.config = {"channels": [int(c) for c in channels], "pool": int(pool), "feature_dim": int(feature_dim)}
        layers, c_in = [], 1
        for c in self.config["channels"]:
            layers.append(
                Convolution(
                    2,
                    c_in,
                    c,
                    strides=2,
                    kernel_size=4,
                    padding=1,
                    act=("leakyrelu", {"negative_slope": 0.2}),
                    norm=None,
                )
            )
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c_in * pool * pool, feature_dim), nn.LeakyReLU(0.2))
        self.out = nn.Linear(feature_dim, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """D_feat: the FC layer's output before the real/fake output, ``(B, feature_dim)``."""
        return self.fc(self.pool(self.convs(x)))

    def forward(self, x: torch.Tensor, with_features: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Real/fake logit ``(B, 1)`` (real = 1); with ``with_features``, ``(D_feat, logit)`` from one pass (through
        ``forward``, so that a DDP D syncs its gradients)."""
        f = self.features(x)
        return (f, self.out(f)) if with_features else self.out(f)

    def features_and_logit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both outputs from one pass."""
        return self(x, with_features=True)


NETWORKS = {"generator": Generator, "discriminator": Discriminator}


def save_networks(path: str | Path, info: dict | None = None, **networks: nn.Module) -> Path:
    """Write ``networks`` (``generator=``, ``discriminator=``; the module of a DDP one) and ``info`` (plain types)
    as one GAN checkpoint."""
    networks = {name: unwrap(net) for name, net in networks.items()}
    unknown = sorted(set(networks) - set(NETWORKS))
    if unknown:
        raise ValueError(f"unknown network name(s) {unknown}, expected some of {sorted(NETWORKS)}")
    return checkpoint.save(path, checkpoint.GAN_FORMAT, networks, info)


def load_networks(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, nn.Module], dict]:
    """Rebuild every network of a ``save_networks`` file (in eval mode); return ``(networks, info)``."""
    return checkpoint.load(path, checkpoint.GAN_FORMAT, NETWORKS, device)


def load_network(path: str | Path, name: str, device: str | torch.device = "cpu") -> nn.Module:
    """One network (``"generator"`` or ``"discriminator"``) of a checkpoint, in eval mode."""
    nets, _ = load_networks(path, device)
    if name not in nets:
        raise KeyError(f"{path} holds no '{name}' (it has {sorted(nets)})")
    return nets[name]


def generator_from(path: str | Path, copy_weights: bool = True, residual: bool | None = None) -> Generator:
    """A generator with the architecture of the one saved at ``path``: its weights, or freshly initialised ones.

    ``residual`` overrides the saved input-to-output skip (``Generator``) of new weights; ``None`` keeps it. Copied
    weights keep the saved one (they compute what they were trained to), and a different request is logged.
    """
    src = load_network(path, "generator")
    if copy_weights:
        if residual is not None and bool(residual) != src.config["residual"]:
            logger.warning(
                "%s: its generator's weights are copied with their own residual=%s (residual=%s applies to new "
                "weights only)",
                path,
                src.config["residual"],
                bool(residual),
            )
        return src.train()
    return Generator(**{**src.config, **({} if residual is None else {"residual": bool(residual)})})


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` on every parameter: the frozen C and D of G-D-C."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
