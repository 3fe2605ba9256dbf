"""Timing of backend 'cupy' on a CUDA machine, run by tools/gpu_cupy.sh (not a test: numbers to read).

1. The kernels alone at T=128, N=2^20, per dtype and time unroll, as a share of the copy bandwidth.
2. The host cost of one call at T=4, N=4096, against torch's own floor for a custom autograd op,
   with and without the kernel launches, and a cProfile of the Python path.
3. Forward + backward at T=8, N=2^20: allocator counters and a torch.profiler table.
"""

import cProfile
import io
import os
import pstats
import statistics
import time

import torch
from triton.testing import do_bench

from flashspike import neuron, surrogate
from flashspike.backends import cuda_source, cupy_backend

dev = torch.device("cuda")
N = 2**20
print(f"{torch.cuda.get_device_name()} | {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | "
      f"PYTORCH_CUDA_ALLOC_CONF={os.environ.get('PYTORCH_CUDA_ALLOC_CONF')!r}")


def bench(fn):
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def per_call_us(fn, n=1000, rounds=5):
    """Median over rounds of the wall-clock mean of n back-to-back calls."""
    for _ in range(50):
        fn()
    means = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        means.append((time.perf_counter() - t0) / n * 1e6)
    return f"{statistics.median(means):6.1f} us (rounds {min(means):.0f}-{max(means):.0f})"


a = torch.empty(2**28, device=dev)  # 1 GiB of float32
b = torch.empty_like(a)
copy_tbs = 2 * a.numel() * 4 / bench(lambda: b.copy_(a)) / 1e9
print(f"device-to-device copy: {copy_tbs:.2f} TB/s (bytes read + written)")
del a, b


def share(nbytes, ms):
    tbs = nbytes / ms / 1e9
    return f"{tbs:4.2f} TB/s {100 * tbs / copy_tbs:3.0f}%"


p = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(alpha=2.0)).params()
print(f"\n# 1. kernels alone, T=128, N=2**20, LIF ATan(2): ms (bandwidth by the bytes each must move); "
      f"default time unroll {cuda_source.UNROLL}")
default_unroll = dict(cuda_source.UNROLL)
for unroll in ("default", 2, 4):
    cuda_source.UNROLL.update(default_unroll if unroll == "default" else {k: unroll for k in default_unroll})
    ks = cupy_backend.CupyKernels()  # fresh caches: the unroll is part of the kernel's name
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        e = torch.finfo(dtype).bits // 8
        x = torch.rand(128, N, device=dev, dtype=dtype) * 1.5
        g_dense = torch.rand_like(x)
        g_scalar = torch.ones((), device=dev, dtype=dtype).expand(128, N)
        row = []
        ms = bench(lambda: ks.forward(x, None, p, False, False))
        row.append(f"infer {ms:.3f} ({share(2 * e * x.numel(), ms)})")
        ms = bench(lambda: ks.forward(x, None, p, True, False))
        row.append(f"train-fwd {ms:.3f} ({share(3 * e * x.numel(), ms)})")
        h = ks.forward(x, None, p, True, False)[2]
        ms = bench(lambda: ks.backward(h, g_scalar, None, p, False, False))
        row.append(f"bwd scalar {ms:.3f} ({share(2 * e * x.numel(), ms)})")
        ms = bench(lambda: ks.backward(h, g_dense, None, p, False, False))
        row.append(f"bwd dense {ms:.3f} ({share(3 * e * x.numel(), ms)})")
        print(f"unroll {unroll!s:7} {str(dtype)[6:]:8s}: " + " | ".join(row))
        del x, g_dense, h
cuda_source.UNROLL.update(default_unroll)

print("\n# 2. host cost per call, T=4, N=4096 (wall clock, median of 5 rounds of 1000 calls)")
x = torch.rand(4, 4096, device=dev, requires_grad=True)
xd = x.detach()
node = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(alpha=2.0), backend="cupy")


class Floor(torch.autograd.Function):
    """torch's own floor for a custom op: two allocations forward, one backward, no kernel."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(torch.empty_like(x))
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.empty_like(grad)


def floor_step():
    x.grad = None
    Floor.apply(x).sum().backward()


def train_step():
    node.reset()
    x.grad = None
    node(x).sum().backward()


def infer_step():
    node.reset()
    with torch.no_grad():
        node(x)


print(f"torch floor: custom Function + sum + backward:  {per_call_us(floor_step)}")
print(f"neuron fwd+bwd (y.sum().backward()):            {per_call_us(train_step)}   (target <= 100 us)")
print(f"neuron fwd under no_grad:                       {per_call_us(infer_step)}")
kernels = cupy_backend.BACKEND.kernels
real_launch = kernels._launch
kernels._launch = lambda *args: None  # the same calls and allocations, no kernel launched
print(f"  fwd+bwd, kernels not launched:                {per_call_us(train_step)}")
print(f"  fwd, kernels not launched:                    {per_call_us(infer_step)}")
kernels._launch = real_launch
h = kernels.forward(xd, None, p, True, False)[2]
ones = torch.ones((), device=dev).expand(4, 4096)
print(f"forward launcher alone (no autograd):           "
      f"{per_call_us(lambda: kernels.forward(xd, None, p, False, False))}")
print(f"backward launcher alone (no autograd):          "
      f"{per_call_us(lambda: kernels.backward(h, ones, None, p, False, False))}")
print(f"torch x.sum() (one small op):                   {per_call_us(lambda: xd.sum())}")
profile = cProfile.Profile()
profile.runcall(lambda: [train_step() for _ in range(500)])
text = io.StringIO()
pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(14)
print("cProfile of 500 fwd+bwd calls, by own time:\n" + "\n".join(text.getvalue().splitlines()[4:26]))

print("\n# 3. fwd+bwd at T=8, N=2**20, float32: where the time goes")
x8 = torch.rand(8, N, device=dev, requires_grad=True)


def train8():
    node.reset()
    x8.grad = None
    node(x8).sum().backward()


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
