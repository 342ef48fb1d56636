"""Training in several processes launched by ``torchrun`` (PyTorch DistributedDataParallel), the Model Zoo way.

``configs/multi_gpu_train.yaml`` (merged after a crop stage's configs) calls these: ``local_device`` (the process's
GPU from ``LOCAL_RANK``, else the CPU), ``start``/``stop`` (the process group: ``nccl`` on CUDA, ``gloo`` on the CPU;
``stop`` ends it only where the matching ``start`` began it, so that the chained training's one group serves every
stage: a process cannot start a second one), ``for_this_rank`` (rank 0 keeps every handler, the others only those
that write nothing), ``on_main`` (rank 0 computes a value, the others receive it) and ``unwrap``. Ignite's
``idist`` answers rank and world size; MONAI's metrics gather their buffers across ranks themselves.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist
from ignite.handlers import ProgressBar
from monai.handlers import MLFlowHandler, StatsHandler
from torch import nn
from torch.utils.data import DataLoader

logger = logging.getLogger(__name__)
# torchrun's variables: a process started from a torchrun worker without them is a plain single process
TORCHRUN_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_NAME",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)
_started: list[bool] = []  # one entry per start(): whether that call began the process group
_coordination: list[Any] = []  # the gloo group for waiting and broadcasting Python objects (a GPU never spins on it)


def launched() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device() -> torch.device:
    """This process's device: ``cuda:<LOCAL_RANK>`` when CUDA is there, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def device_ids(device: torch.device) -> list[torch.device] | None:
    """``DistributedDataParallel``'s ``device_ids``: the GPU of this process, None on the CPU."""
    return [device] if torch.device(device).type == "cuda" else None


def start(device: torch.device | str, timeout_minutes: float = 30.0) -> bool:
    """Join ``torchrun``'s process group (``nccl`` on CUDA, ``gloo`` on the CPU) unless this process is in one;
    return whether this call began it. Ranks above 0 log warnings only."""
    device = torch.device(device)
    began = not dist.is_initialized()
    if began:
        timeout = timedelta(minutes=timeout_minutes)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        _coordination.append(dist.new_group(backend="gloo", timeout=timeout))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if rank() > 0:
        logging.getLogger().setLevel(logging.WARNING)
    _started.append(began)
    return began


def stop() -> None:
    """End the process group if the matching ``start`` began it."""
    if _started.pop() if _started else False:
        _coordination.clear()
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return idist.get_rank()


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return idist.get_world_size()


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (on the CPU: a GPU does not spin while rank 0 works alone)."""
    if dist.is_initialized():
        dist.barrier(group=_coordination[-1] if _coordination else None)


def on_main(function: Callable, *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` computed by rank 0 only and handed to every rank (a picklable value)."""
    if world_size() == 1:
        return function(*args, **kwargs)
    box = [function(*args, **kwargs) if is_main() else None]
    dist.broadcast_object_list(box, src=0, group=_coordination[-1] if _coordination else None)
    return box[0]


def share(value: Any = None) -> Any:
    """Rank 0's ``value`` (picklable), on every rank: what the other ranks wait for."""
    return on_main(lambda: value)


# handlers that only write (logs, progress bars, tracking, pictures): rank 0's alone. Checkpoint savers stay on every
# rank (Ignite writes on rank 0 only: ``DiskSaver.save_on_rank``), and so do those that change or stop the training
# (LR schedule, validation, early stopping) or gather across ranks (the epoch loss averages)
WRITERS: tuple[type, ...] = (ProgressBar, StatsHandler, MLFlowHandler)


def writes(handler: Any) -> bool:
    """Whether a handler only writes: one of ``WRITERS``, or one that says so (``writes_only = True``)."""
    return isinstance(handler, WRITERS) or bool(getattr(handler, "writes_only", False))


def for_this_rank(handlers: Iterable | None) -> list:
    """Every handler on rank 0; on the other ranks those that do not only write (``writes``)."""
    handlers = list(handlers or [])
    return handlers if is_main() else [h for h in handlers if not writes(h)]


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` (what is saved and exported), else ``module`` itself."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def whole_dataset_loader(loader: DataLoader) -> DataLoader:
    """``loader`` itself, or, when a ``DistributedSampler`` gives it a share of its dataset, a loader over all of it
    in order (same batch size and workers): what rank 0 alone computes on, as one process would."""
    if not isinstance(getattr(loader, "sampler", None), torch.utils.data.DistributedSampler):  # any iterable
        return loader
    return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers)


def plain_environment() -> dict[str, str]:
    """This process's environment without torchrun's variables: what a child process that must not join the
    process group (Ultralytics launching its own multi-GPU training) is started with."""
    return {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES and not k.startswith("TORCHELASTIC_")}
