"""Timing and memory helpers: repeated timings summarised by median and spread, peak resident memory."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def summary(samples: list[float]) -> dict[str, Any]:
    """Median, quartiles (the spread) and count of ``samples``."""
    if not samples:
        return {"median": None, "p25": None, "p75": None, "n": 0}
    if len(samples) == 1:
        return {"median": samples[0], "p25": samples[0], "p75": samples[0], "n": 1}
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return {"median": statistics.median(samples), "p25": q1, "p75": q3, "n": len(samples)}


def timings(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeat`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def release_freed_memory() -> None:
    """Give freed heap memory back to the system (glibc), so that resident memory follows what is in use.

    Large blocks are also made to come from their own mappings (``M_MMAP_THRESHOLD`` fixed at 1 MiB), which the
    system gets back as soon as they are freed; elsewhere than glibc this does nothing.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak resident memory of this process during a block, above what it held when the block began (MiB).

    Linux only: the kernel's high-water mark (``VmHWM``) is reset through ``/proc/self/clear_refs``; elsewhere (or
    when that is refused) ``mib`` stays None. ``cuda``: also the peak of torch's CUDA allocator.
    """

    def __init__(self, cuda: bool = False) -> None:
        self.cuda, self.mib, self.cuda_mib = cuda, None, None

    def __enter__(self) -> PeakMemory:
        release_freed_memory()
        self.base = _status_kib("VmRSS")
        try:
            CLEAR_REFS.write_text("5")
        except OSError:
            self.base = None
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.cuda_base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc: object) -> None:
        peak = _status_kib("VmHWM")
        if self.base is not None and peak is not None:
            self.mib = max(0, peak - self.base) / 1024
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.cuda_mib = (torch.cuda.max_memory_allocated() - self.cuda_base) / 2**20
