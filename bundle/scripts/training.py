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


def set_threads(n: int) -> int:
    """Use ``n`` torch CPU threads (0: every core, as the detector's stage uses); return the number in use."""
    torch.set_num_threads(int(n) if n and n > 0 else max(1, os.cpu_count() or 1))
    return torch.get_num_threads()
