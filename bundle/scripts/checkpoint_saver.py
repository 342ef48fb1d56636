"""Training checkpoints that survive a kill: MONAI's ``CheckpointSaver`` with atomic files and resumable bookkeeping.

MONAI's ``CheckpointSaver`` writes in place, and Ignite's ``Checkpoint`` deletes the previous file *before* writing
the next one, so a kill at the wrong moment leaves a truncated newest checkpoint (or none). ``AtomicCheckpointSaver``
is the same handler (same arguments, same file names) whose files are written to a temporary file, ``fsync``-ed and
renamed into place, the file it replaces being removed only after that. Its ``state_dict`` is what it has saved
(which epoch, which best score), so a resumed run keeps replacing the same files and never overwrites the best
network with a worse epoch. ``BestSoFar`` carries the validator's best metric and the early-stopping counter across
a resume. In a stage config::

    validate#handlers: [..., "@best_saver", "@early_stop"]
    train#save_dict: {network: ..., trainer: ..., best_so_far: {_target_: scripts.checkpoint_saver.BestSoFar, ...}}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointSaver

from .checkpoint import atomic_save
from .resume import checkpoint_epoch

logger = logging.getLogger(__name__)


class AtomicDiskSaver(DiskSaver):
    """An Ignite ``DiskSaver`` writing through ``checkpoint.atomic_save``; ``remove`` waits for the next save.

    ``filename``: a fixed name for every save (MONAI's ``key_metric_filename``/``final_filename``), else Ignite's.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None) -> None:
        super().__init__(dirname=str(dirname), require_empty=False)
        self.filename = filename
        self._pending: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        name = self.filename or filename
        if idist.get_rank() == self.save_on_rank:
            atomic_save(checkpoint, Path(self.dirname) / name)
            for old in self._pending:  # the files this one replaces, now that it is safely on disk
                if old != name:
                    (Path(self.dirname) / old).unlink(missing_ok=True)
        self._pending.clear()

    def remove(self, filename: str) -> None:
        self._pending.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) writing atomically; a state dict for resumption.

    ``previous``: a checkpoint of an earlier run in ``save_dir`` that this run resumed from (``*=<epoch>.pt``);
    the first interval save replaces it like one of its own.
    """

    def __init__(self, *args: Any, previous: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for ckpt in self._checkpoints().values():
            ckpt.save_handler = AtomicDiskSaver(self.save_dir, getattr(ckpt.save_handler, "filename", None))
        if previous is not None and self._interval_checkpoint is not None:
            previous, epoch = Path(previous), checkpoint_epoch(previous)
            if previous.parent.resolve() == Path(self.save_dir).resolve() and epoch is not None:
                self._interval_checkpoint._saved = [Checkpoint.Item(epoch, previous.name)]

    def _checkpoints(self) -> dict[str, Checkpoint]:
        named = {
            "final": self._final_checkpoint,
            "key_metric": self._key_metric_checkpoint,
            "interval": self._interval_checkpoint,
        }
        return {name: ckpt for name, ckpt in named.items() if ckpt is not None}

    def state_dict(self) -> dict[str, Any]:
        """What each of its ``Checkpoint``s has saved (their ``_saved`` lists of priority and file name)."""
        return {name: ckpt.state_dict() for name, ckpt in self._checkpoints().items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``; a MONAI key-metric state (``{"_saved": ...}``) is accepted too."""
        if "_saved" in state_dict:
            state_dict = {"key_metric": state_dict}
        for name, ckpt in self._checkpoints().items():
            if name in state_dict:
                ckpt.load_state_dict(state_dict[name])


class BestSoFar:
    """The validation bookkeeping a resumed run must not forget, as one state dict.

    Args:
        evaluator: the validator (MONAI ``Evaluator``): ``state.best_metric`` and ``state.best_metric_epoch``.
        savers: its ``AtomicCheckpointSaver``s (the best network's file and score).
        early_stop: MONAI ``EarlyStopHandler`` (its counter and best score), or None.
    """

    def __init__(self, evaluator: Engine, savers: list[AtomicCheckpointSaver] | None = None, early_stop=None) -> None:
        self.evaluator, self.savers, self.early_stop = evaluator, list(savers or []), early_stop

    def _stopper(self):
        return getattr(self.early_stop, "_handler", None)  # created once the handler knows its trainer

    def state_dict(self) -> dict[str, Any]:
        state = self.evaluator.state
        out: dict[str, Any] = {
            "best_metric": float(getattr(state, "best_metric", -1)),
            "best_metric_epoch": int(getattr(state, "best_metric_epoch", -1)),
            "savers": [s.state_dict() for s in self.savers],
        }
        if self._stopper() is not None:
            out["early_stop"] = dict(self._stopper().state_dict())
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.evaluator.state.best_metric = state_dict["best_metric"]
        self.evaluator.state.best_metric_epoch = state_dict["best_metric_epoch"]
        for saver, saved in zip(self.savers, state_dict.get("savers", []), strict=False):
            saver.load_state_dict(saved)
        if "early_stop" in state_dict and self._stopper() is not None:
            self._stopper().load_state_dict(state_dict["early_stop"])
        logger.info(
            "resumed validation state: best %.4f at epoch %d",
            state_dict["best_metric"],
            state_dict["best_metric_epoch"],
        )
