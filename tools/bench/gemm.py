"""The machine's measured fp32 matrix-multiply peak with this torch build and thread count: the yardstick for every
network's achieved FLOP/s."""

from __future__ import annotations

from typing import Any

import torch

from .stats import summary, timings


def gemm_peak(device: str = "cpu", n: int = 1024, repeat: int = 10) -> dict[str, Any]:
    """GFLOP/s of ``n x n @ n x n`` fp32 products (2 n^3 FLOPs each): the best run (the peak) and the spread."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)

    def product() -> None:
        torch.mm(a, b)
        if device != "cpu":
            torch.cuda.synchronize()

    seconds = timings(product, repeat, warmup=2)
    gflops = [2 * n**3 / s / 1e9 for s in seconds]
    return {
        "device": device,
        "threads": torch.get_num_threads(),
        "n": n,
        "peak_gflops": max(gflops),
        "gflops": summary(gflops),
    }
