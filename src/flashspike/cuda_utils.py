"""Timing helpers."""

from __future__ import annotations

import statistics
import time

import torch

__all__ = ["cal_fun_t"]


def cal_fun_t(n: int, device, f, *args, **kwargs) -> float:
    """Seconds per call of ``f(*args, **kwargs)``: the median of ``n`` timed calls after a warm-up call.

    On a CUDA device each call is timed with CUDA events and the device is synchronized, so the time
    is the GPU's, queued work included; on any other device with ``time.perf_counter``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    device = torch.device(device)
    f(*args, **kwargs)  # warm-up: compilation, caches, allocator
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(n):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            f(*args, **kwargs)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
    else:
        for _ in range(n):
            t0 = time.perf_counter()
            f(*args, **kwargs)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)
