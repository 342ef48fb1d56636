"""Ignite engines of stages 3-5 (MONAI ``Trainer`` subclasses) and the handlers their configs attach.

- ``GDTrainer`` (stage 3, G-D): per batch, one D step on ``d_loss_function(X, G(X))`` then one G step on
  ``g_loss_function(X, G(X))`` (D's parameters do not collect gradients during the G step).
- ``GDCTrainer`` (stages 4 and 5, G-D-C steps 1 and 2): per batch, M = ``mask_function(X)`` (no gradient), then one
  G step on ``loss_function(X, G(X), M, G)``; the frozen networks (C and D) are held in eval mode with
  ``requires_grad=False`` and no optimizer sees them.

Like MONAI's ``SupervisedTrainer``, an iteration's output is decollated: a list of per-crop dicts ``{"image",
"fake", "mask", "loss"}`` where ``loss`` (G's total) is what MONAI's trainer handlers read, e.g. the
``MLFlowHandler`` that ``--tracking mlflow`` adds. Every named loss term of the iteration is in
``engine.state.loss_terms`` (``{term: float}``), which the handlers below average and show.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from ignite.metrics import Average
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from PIL import Image
from torch import nn
from torch.optim import Optimizer

from .networks import freeze

logger = logging.getLogger(__name__)


def _image(batch) -> torch.Tensor:
    return batch["image"] if isinstance(batch, dict) else batch[0]


def _output(engine: Engine, output: dict) -> list[dict] | dict:
    """Set the iteration's output and fire MONAI's ``MODEL_COMPLETED`` (its decollation runs there), as
    ``SupervisedTrainer`` does."""
    engine.state.output = output
    engine.fire_event(IterationEvents.MODEL_COMPLETED)
    return engine.state.output


class GDTrainer(Trainer):
    """Stage 3: the G-D GAN of the thesis (GANomaly-style reconstruction with an adversarial D)."""

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader,
        g_network: nn.Module,
        g_optimizer: Optimizer,
        g_loss_function: Callable,
        d_network: nn.Module,
        d_optimizer: Optimizer,
        d_loss_function: Callable,
        epoch_length: int | None = None,
        train_handlers: Sequence | None = None,
        non_blocking: bool = False,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            handlers=train_handlers,
            decollate=True,
        )
        self.g_network, self.g_optimizer, self.g_loss_function = g_network, g_optimizer, g_loss_function
        self.d_network, self.d_optimizer, self.d_loss_function = d_network, d_optimizer, d_loss_function

    def _iteration(self, engine: GDTrainer, batchdata) -> dict:
        x = _image(batchdata).to(engine.state.device, non_blocking=engine.non_blocking).float()
        engine.g_network.train()
        engine.d_network.train()
        fake = engine.g_network(x)

        engine.d_optimizer.zero_grad(set_to_none=True)
        d_terms = engine.d_loss_function(x, fake)
        d_terms["loss"].backward()
        engine.d_optimizer.step()

        engine.g_optimizer.zero_grad(set_to_none=True)
        engine.d_network.requires_grad_(False)
        try:
            g_terms = engine.g_loss_function(x, fake)
            g_terms["loss"].backward()
        finally:
            engine.d_network.requires_grad_(True)
        engine.g_optimizer.step()

        losses = {"g_loss": g_terms["loss"].item(), "d_loss": d_terms["loss"].item()}
        losses.update({k: float(v.item()) for k, v in {**g_terms, **d_terms}.items() if k != "loss"})
        engine.state.loss_terms = losses
        return _output(engine, {"image": x.detach(), "fake": fake.detach(), "mask": None, "loss": losses["g_loss"]})


class GDCTrainer(Trainer):
    """Stages 4 and 5: train G under the frozen ``frozen_networks`` (C and D) with ``loss_function``."""

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader,
        g_network: nn.Module,
        g_optimizer: Optimizer,
        loss_function: Callable,
        mask_function: Callable,
        frozen_networks: Sequence[nn.Module] = (),
        epoch_length: int | None = None,
        train_handlers: Sequence | None = None,
        non_blocking: bool = False,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            handlers=train_handlers,
            decollate=True,
        )
        self.g_network, self.g_optimizer = g_network, g_optimizer
        self.loss_function, self.mask_function = loss_function, mask_function
        self.frozen_networks = [freeze(n) for n in frozen_networks]
        g_params = {id(p) for p in g_network.parameters()}
        for net in self.frozen_networks:
            if any(id(p) in g_params for p in net.parameters()):
                raise ValueError("a frozen network shares parameters with the generator")
        opt_params = {id(p) for group in g_optimizer.param_groups for p in group["params"]}
        if any(id(p) in opt_params for net in self.frozen_networks for p in net.parameters()):
            raise ValueError("the generator's optimizer holds parameters of a frozen network")

    def _iteration(self, engine: GDCTrainer, batchdata) -> dict:
        x = _image(batchdata).to(engine.state.device, non_blocking=engine.non_blocking).float()
        for net in engine.frozen_networks:  # a handler or user may have called .train(): keep them frozen
            if net.training:
                net.eval()
        with torch.no_grad():
            mask = engine.mask_function(x).detach()
        engine.g_network.train()
        engine.g_optimizer.zero_grad(set_to_none=True)
        fake = engine.g_network(x)
        terms = engine.loss_function(x, fake, mask, engine.g_network)
        terms["loss"].backward()
        engine.g_optimizer.step()
        losses = {k: float(v.item()) for k, v in terms.items() if v.ndim == 0}
        engine.state.loss_terms = losses
        return _output(engine, {"image": x.detach(), "fake": fake.detach(), "mask": mask, "loss": losses["loss"]})


def loss_terms(engine: Engine) -> dict[str, float]:
    """Every named loss term of the engine's last iteration (``engine.state.loss_terms``)."""
    return dict(getattr(engine.state, "loss_terms", None) or {})


class EpochLossAverages:
    """Ignite ``Average`` of each loss term over an epoch, into ``engine.state.metrics[prefix + term]``.

    The terms are those of the first iteration's ``engine.state.loss_terms``; one ``Average`` per term. Its
    ``completed`` runs from this handler's ``EPOCH_COMPLETED``, registered at ``attach``, so the averages are in
    ``engine.state.metrics`` before the Stats/MLflow handlers listed after this one read them.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.averages: dict[str, Average] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._completed)

    def _reset(self, engine: Engine) -> None:
        for average in self.averages.values():
            average.reset()

    def _update(self, engine: Engine) -> None:
        for term, value in loss_terms(engine).items():
            self.averages.setdefault(term, Average()).update(value)

    def _completed(self, engine: Engine) -> None:
        for term, average in self.averages.items():
            average.completed(engine, f"{self.prefix}{term}")


class LossProgressBar:
    """Ignite's ``ProgressBar`` showing the loss terms of each iteration.

    ``mininterval`` (seconds between refreshes) defaults to 0.1 on a terminal and 30 otherwise, so that logs
    written to files are not flooded with carriage-return updates.
    """

    writes_only = True  # under DDP, rank 0's alone (scripts.distributed.for_this_rank)

    def __init__(self, persist: bool = False, mininterval: float | None = None) -> None:
        if mininterval is None:
            mininterval = 0.1 if sys.stderr.isatty() else 30.0
        self.bar = ProgressBar(persist=persist, mininterval=mininterval)

    def attach(self, engine: Engine) -> None:
        self.bar.attach(engine, output_transform=lambda _output: loss_terms(engine))


def _gray_to_rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(a, 0, 1)[..., None], 3, axis=2)


def sample_grid(
    image: torch.Tensor, fake: torch.Tensor, mask: torch.Tensor | None, n: int = 4, diff_gain: float = 4.0
) -> np.ndarray:
    """RGB uint8 grid, one row per crop: input, G output, |G - X| (times ``diff_gain``, hot), mask (if any)."""
    rows = []
    for i in range(min(n, image.shape[0])):
        x = image[i, 0].float().cpu().numpy()
        g = fake[i, 0].float().cpu().numpy()
        d = np.clip(np.abs(g - x) * diff_gain, 0, 1)
        hot = np.stack([np.clip(3 * d, 0, 1), np.clip(3 * d - 1, 0, 1), np.clip(3 * d - 2, 0, 1)], axis=2)
        cols = [_gray_to_rgb(x), _gray_to_rgb(g), hot]
        if mask is not None:
            cols.append(_gray_to_rgb(mask[i, 0].float().cpu().numpy()))
        sep = np.ones((x.shape[0], 2, 3))
        rows.append(np.concatenate([c for col in cols for c in (col, sep)][:-1], axis=1))
    sep = np.ones((2, rows[0].shape[1], 3))
    grid = np.concatenate([r for row in rows for r in (row, sep)][:-1], axis=0)
    return (grid * 255).round().astype(np.uint8)


class SampleImages:
    """Every ``interval`` epochs and at the end, writes the last batch's sample grid to ``save_dir/epoch_NNNN.png``.

    The grids show training crops of patients' images, so they stay in ``save_dir`` unless ``log_images`` is true
    (the config's ``log_images``): then, when the engine completes, ``save_dir`` is logged as the ``samples`` artifact
    folder of the MLflow run ``run_name`` (the stage's run; made and ended here if none of that name is open).
    """

    writes_only = True  # under DDP, rank 0's alone (scripts.distributed.for_this_rank)

    def __init__(
        self,
        save_dir: str | Path,
        interval: int = 5,
        n: int = 4,
        diff_gain: float = 4.0,
        log_images: bool = False,
        tracking_uri: str | None = None,
        experiment_name: str = "nasal_bone_fracture",
        run_name: str | None = None,
    ) -> None:
        self.save_dir, self.interval, self.n, self.diff_gain = Path(save_dir), max(int(interval), 1), n, diff_gain
        self.log_images, self.tracking_uri = bool(log_images), tracking_uri
        self.experiment_name, self.run_name = experiment_name, run_name
        if self.log_images and not (tracking_uri and run_name):
            raise ValueError("log_images needs tracking_uri and run_name")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.write)
        engine.add_event_handler(Events.COMPLETED, self.write)
        if self.log_images:
            engine.add_event_handler(Events.COMPLETED, self.log)

    def write(self, engine: Engine) -> Path | None:
        out = engine.state.output  # the last batch, decollated: one dict per crop
        if not out or out[0].get("image") is None:
            return None
        image, fake = (torch.stack([o[k] for o in out]) for k in ("image", "fake"))
        mask = None if out[0].get("mask") is None else torch.stack([o["mask"] for o in out])
        self.save_dir.mkdir(parents=True, exist_ok=True)
        path = self.save_dir / f"epoch_{engine.state.epoch:04d}.png"
        Image.fromarray(sample_grid(image, fake, mask, self.n, self.diff_gain)).save(path)
        return path

    def log(self, engine: Engine | None = None) -> None:
        """Log ``save_dir`` into the MLflow run ``run_name`` (only called with ``log_images``)."""
        from .tracking import Tracker

        if not self.save_dir.is_dir():
            return
        tracker = Tracker(str(self.tracking_uri), self.experiment_name)
        run_id, started = tracker.open_or_start(str(self.run_name))
        tracker.artifact(run_id, self.save_dir, "samples")
        if started:
            tracker.end(run_id)
