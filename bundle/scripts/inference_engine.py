"""MONAI engine parts of the inference bundle: per-item error capture, batch preparation and the inferer.

A bad file must never stop the batch, so ``SafeCompose`` turns a failing preprocessing chain into an error
record (``path``, ``name``, ``stem``, ``error``) that ``PrepareCrop``, ``FractureInferer`` and the writer pass through.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.inferers import Inferer
from monai.transforms import Compose

from .imageio import XrayReadError, one_line
from .masks import region_map

logger = logging.getLogger("nasal.inference")
NOT_FOUND = "no nasal bone found"  # the `finding_reason` of a "not assessable" image without a nasal bone box


def error_message(err: BaseException, name: str = "", path: str = "") -> str:
    """One line naming the file and what is wrong: ``"<name>: <problem>"``.

    MONAI wraps each failing transform in a RuntimeError; the cause is what went wrong. The first ``XrayReadError``
    in the chain of causes gives its own problem, else the innermost cause its ``"Type: message"``. ``path`` (the
    file as opened) is replaced by ``name`` (its path relative to the input folder) wherever the message repeats
    it, so no absolute path reaches the outputs.
    """
    while err.__cause__ is not None and not isinstance(err, XrayReadError):
        err = err.__cause__
    problem = err.problem if isinstance(err, XrayReadError) else f"{type(err).__name__}: {err}"
    if path and name:
        problem = problem.replace(str(path), name)
    return one_line(f"{name}: {problem}" if name else problem)


class SafeCompose(Compose):
    """A ``Compose`` that returns an error record instead of raising, so one bad file never stops the evaluator.

    The record keeps ``keep_keys`` of the input dict (the file's path, relative name and output stem) and adds
    ``error_key``: one line, ``"<name>: <problem>"``.
    """

    def __init__(
        self,
        transforms: Any = None,
        keep_keys: tuple[str, ...] = ("path", "name", "stem"),
        error_key: str = "error",
        **kwargs,
    ) -> None:
        super().__init__(transforms, **kwargs)
        self.keep_keys, self.error_key = tuple(keep_keys), error_key

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(input_, *args, **kwargs)
        except Exception as err:  # one bad file must not stop the batch
            item = input_ if isinstance(input_, dict) else {}
            message = error_message(err, str(item.get("name", "")), str(item.get("path", "")))
            logger.warning("%s", message)
            return {**{k: item[k] for k in self.keep_keys if k in item}, self.error_key: message}


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
