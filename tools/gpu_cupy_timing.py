"""Timing of backend 'cupy' on a CUDA machine, run by tools/gpu_cupy.sh (not a test: numbers to read).

1. The kernels alone at T=128, N=2^20, per dtype and time unroll, as a share of the copy bandwidth.
3. Forward + backward at T=8, N=2^20: allocator counters and a torch.profiler table.
(The host cost of one call, once part 2 here, is measured by tools/gpu_diag.py, parts 1 and 2.)
"""

import functools
import os
import time
from types import SimpleNamespace

import torch
from triton.testing import do_bench

from flashspike import neuron, surrogate
from flashspike.cuda_utils import median_seconds
from flashspike.backends import cuda_source, cupy_backend
from flashspike.benchmarks.neuron import copy_bandwidth, flashspike_subjects, make_call

dev = torch.device("cuda")
N = 2**20
print(f"{torch.cuda.get_device_name()} | {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | "
      f"PYTORCH_CUDA_ALLOC_CONF={os.environ.get('PYTORCH_CUDA_ALLOC_CONF')!r}")


# GPU milliseconds of one launch: Triton's do_bench (L2 cleared between calls), median.
bench = functools.partial(do_bench, warmup=25, rep=100, return_mode="median")


def per_call_us(fn, n=1000, rounds=5):
    """Median over rounds of the mean of n back-to-back calls, in µs."""
    for _ in range(50):
        fn()
    return f"{median_seconds(fn, dev, rounds, n) * 1e6:6.1f} us"


copy_bps = copy_bandwidth(dev)  # the benchmark's own measure: 1 GiB copied, bytes read + written
print(f"device-to-device copy: {copy_bps / 1e12:.2f} TB/s")


def share(nbytes, ms):
    """Achieved bandwidth and its share of the copy's."""
    bps = nbytes / (ms * 1e-3)
    return f"{bps / 1e12:4.2f} TB/s {100 * bps / copy_bps:3.0f}%"


p = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(alpha=2.0)).params()
print(f"\n# 1. kernels alone, T=128, N=2**20, LIF ATan(2): ms (bandwidth by the bytes each must move); "
      f"default time unroll {cuda_source.UNROLL}")
default_unroll = dict(cuda_source.UNROLL)
for unroll in ("default", 2, 4):
    cuda_source.UNROLL.update(default_unroll if unroll == "default" else {k: unroll for k in default_unroll})
    ks = cupy_backend.CupyKernels()  # fresh caches: the unroll is part of the kernel's name
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.rand(128, N, device=dev, dtype=dtype) * 1.5
        h = ks.forward(x, None, p, True, False)[2]
        grads = {"scalar": torch.ones((), device=dev, dtype=dtype).expand(128, N), "dense": torch.rand_like(x)}
        # (what, the launch, elements moved per neuron-step: the reads and writes it cannot avoid)
        kernels_alone = [
            ("infer", lambda: ks.forward(x, None, p, False, False), 2),  # X in, S out
            ("train-fwd", lambda: ks.forward(x, None, p, True, False), 3),  # X in, S and H out
            ("bwd scalar", lambda: ks.backward(h, grads["scalar"], None, p, False, False), 2),  # H in, dX out
            ("bwd dense", lambda: ks.backward(h, grads["dense"], None, p, False, False), 3),  # H, dS in, dX out
        ]
        timings = [(what, bench(launch), moved * x.element_size() * x.numel()) for what, launch, moved in kernels_alone]
        print(f"unroll {unroll!s:7} {str(dtype)[6:]:8s}: "
              + " | ".join(f"{what} {ms:.3f} ({share(nbytes, ms)})" for what, ms, nbytes in timings))
        del x, h, grads
cuda_source.UNROLL.update(default_unroll)

print("\n# 3. fwd+bwd at T=8, N=2**20, float32: where the time goes")
# The benchmark's own call (a fresh LIF node and input each): forward + y.sum().backward().
cupy_subject = flashspike_subjects(SimpleNamespace(if_node=False, backends=["cupy"]), dev)[0][0]
train8 = make_call(cupy_subject, "fb", 8, N, torch.float32, dev)

stats0 = torch.cuda.memory_stats(dev)
print(f"per call {per_call_us(train8, n=200)}")
stats1 = torch.cuda.memory_stats(dev)
for key in ("num_device_alloc", "num_device_free", "num_alloc_retries"):
    print(f"  {key}: +{stats1.get(key, 0) - stats0.get(key, 0)} over those calls")
activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
with torch.profiler.profile(activities=activities) as prof:
    for _ in range(20):
        train8()
    torch.cuda.synchronize()
averages = prof.key_averages()
print(averages.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))
print(averages.table(sort_by="self_device_time_total", row_limit=8, max_name_column_width=40))
