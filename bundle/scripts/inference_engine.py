"""MONAI engine parts of the inference bundle: per-item error capture, batch preparation and the inferer.

A bad file must never stop the batch, so ``SafeCompose`` turns a failing preprocessing chain into an error
record (``path``, ``stem``, ``error``) that ``PrepareCrop``, ``FractureInferer`` and the writer pass through.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.inferers import Inferer
from monai.transforms import Compose

from .imageio import XrayReadError
from .masks import region_map

logger = logging.getLogger("nasal.inference")
_EXCEPTION_LINE = re.compile(r"^(?:[\w]+\.)*(\w+(?:Error|Exception)): (.+)$", re.MULTILINE)


def error_message(err: BaseException) -> str:
    """``"Type: message"`` of the innermost cause of ``err`` (MONAI wraps each failing transform in a RuntimeError).

    When no reader could load the file, the first reader's own diagnosis (``XrayReader``, tried first) is used
    (an ``XrayReadError``) instead of MONAI's list of every registered reader's failure.
    """
    while err.__cause__ is not None:
        err = err.__cause__
    text = str(err)
    if "cannot find a suitable reader" in text:
        found = _EXCEPTION_LINE.findall(text.split("\n", 1)[-1])
        ours = [m for m in found if m[0] == XrayReadError.__name__]
        if ours or found:
            kind, message = (ours or found)[0]
            return f"{kind}: {message}"
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


class SafeCompose(Compose):
    """A ``Compose`` that returns an error record instead of raising, so one bad file never stops the evaluator.

    The record keeps ``keep_keys`` of the input dict (e.g. the file's path and output stem) and adds ``error_key``.
    """

    def __init__(
        self, transforms: Any = None, keep_keys: tuple[str, ...] = ("path", "stem"), error_key: str = "error", **kwargs
    ) -> None:
        super().__init__(transforms, **kwargs)
        self.keep_keys, self.error_key = tuple(keep_keys), error_key

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(input_, *args, **kwargs)
        except Exception as err:  # one bad file must not stop the batch
            message = error_message(err)
            logger.warning("%s: %s", input_.get("path", "?") if isinstance(input_, dict) else "?", message)
            return {**{k: input_[k] for k in self.keep_keys if k in input_}, self.error_key: message}


class PrepareCrop(PrepareBatch):
    """``SupervisedEvaluator`` batch preparation: the nasal bone crops as network input, and which items to skip.

    An item is skipped (not fed to the networks) when its preprocessing failed (``error``) or no nasal bone was
    found (``box_source == "none"``); the inferer receives ``skip`` as a keyword argument.
    """

    def __init__(self, crop_key: str = "crop", error_key: str = "error") -> None:
        self.crop_key, self.error_key = crop_key, error_key

    def __call__(
        self, batchdata: dict[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[torch.Tensor | None, None, tuple, dict[str, Any]]:
        errors = batchdata.get(self.error_key)
        sources = batchdata.get("box_source")
        size = len(errors) if errors is not None else len(batchdata[self.crop_key])
        skip = [
            (errors is not None and errors[i] is not None) or (sources is not None and sources[i] == "none")
            for i in range(size)
        ]
        crop = batchdata.get(self.crop_key)
        if crop is not None:
            crop = torch.as_tensor(crop).to(device=device, dtype=torch.float32, non_blocking=non_blocking, **kwargs)
        return crop, None, (), {"skip": skip}


class FractureInferer(Inferer):
    """Runs classifier C and the G-D-C step-2 region map on the crops of the items not skipped.

    Returns ``{"pred": logits (B, 1), "heatmap": (B, 1, H, W) in [0, 1], "region": (B, 1, H, W) bool}``;
    skipped items get a NaN logit and empty maps. Called without ``skip`` (e.g. by MONAI's bundle tools)
    every item is processed.
    """

    def __init__(self, region_network: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.region_network = region_network

    @torch.no_grad()
    def __call__(
        self,
        inputs: torch.Tensor | None,
        network: torch.nn.Module,
        *args: Any,
        skip: list[bool] | None = None,
        **kwargs,
    ) -> dict[str, torch.Tensor]:
        size = len(skip) if skip is not None else inputs.shape[0]
        skip = skip or [False] * size
        if inputs is None:
            return {"pred": torch.full((size, 1), float("nan"))}
        logits = torch.full((size, 1), float("nan"), device=inputs.device)
        heat = torch.zeros_like(inputs)
        region = torch.zeros_like(inputs, dtype=torch.bool)
        keep = [i for i, s in enumerate(skip) if not s]
        if keep:
            crops = inputs[keep]
            logits[keep] = network(crops, *args, **kwargs).reshape(len(keep), -1)[:, :1].float()
            if self.region_network is not None:
                heat[keep], region[keep] = region_map(self.region_network, crops)
        return {"pred": logits, "heatmap": heat, "region": region}
