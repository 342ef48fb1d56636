"""What the training configs call around MONAI's engines: the learning-rate schedule and CPU threads."""

from __future__ import annotations

import os

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, LRScheduler, OneCycleLR


def lr_scheduler(
    optimizer: Optimizer, schedule: str, lr: float, total_steps: int, warmup_fraction: float = 0.2
) -> LRScheduler:
    """``onecycle``: warm-up to ``lr`` over ``warmup_fraction`` of ``total_steps``, then cosine decay (per
    iteration); ``constant``: ``lr`` throughout."""
    if schedule == "onecycle":
        return OneCycleLR(
            optimizer, max_lr=lr, total_steps=max(1, total_steps), pct_start=warmup_fraction, cycle_momentum=False
        )
    if schedule == "constant":
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise ValueError(f"lr_schedule must be 'onecycle' or 'constant', got {schedule!r}")


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the platform has one, else every core."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_threads(threads: int | None = 0) -> int:
    """Use ``threads`` torch CPU threads and return the number in use: ``None`` leaves it as it is; 0 means every
    core this process may run on (its CPU affinity), shared out between the processes of a torchrun node
    (``LOCAL_WORLD_SIZE``).

    Importing Ultralytics sets ``OMP_NUM_THREADS=1`` when it is unset, and its device selection would leave torch
    one thread fewer than the cores; the stages and inference call this so that their networks use every core.
    """
    if threads is None:
        return torch.get_num_threads()
    share = max(1, usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    torch.set_num_threads(max(1, int(threads) or share))
    return torch.get_num_threads()
