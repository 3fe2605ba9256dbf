"""Timing helpers."""

from __future__ import annotations

import statistics
import time

import torch

__all__ = ["cal_fun_t", "median_seconds"]


def cal_fun_t(n: int, device, f, *args, **kwargs) -> float:
    """Seconds per call of ``f(*args, **kwargs)``: the median of ``n`` timed calls after a warm-up call.

    On a CUDA device each call is timed with CUDA events and the device is synchronized, so the time
    is the GPU's, queued work included; on any other device with ``time.perf_counter``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    f(*args, **kwargs)  # warm-up: compilation, caches, allocator
    return median_seconds(lambda: f(*args, **kwargs), device, n)


def median_seconds(call, device, repeats: int, inner: int = 1) -> float:
    """Seconds per call: the median over ``repeats`` timings of ``inner`` back-to-back calls.

    CUDA events (after a synchronize) on a CUDA device, ``time.perf_counter`` elsewhere. Several inner
    calls per timing measure throughput when one call is too short to time alone.
    """
    device = torch.device(device)
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0 / inner)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                call()
            times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)
