"""Where the time goes (a diagnostic for the GPU machine; not a benchmark we report from).

    PYTHONPATH=src python3 tools/gpu_diag.py [OUTDIR]      # DIAG_SECTIONS="4" runs only part 4

1. Host cost of one neuron call at T=4, N=4096 (float32), split into its parts: PyTorch's floors
   (a builtin op, an empty autograd.Function), our launchers called directly, the raw launches.
2. cProfile of the eager node's forward + backward for the cupy backend.
3. The example net's stateless layers (max-pool, conv, BN) forward + backward on spikes, float16,
   NCHW against channels_last: is channels_last worth it?
4. The example's eager training step under torch.profiler: host time per step and GPU time per step
   (the example's default layout, channels_last on CUDA; -cuda_graph off, so each kernel shows).
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from flashspike import neuron, surrogate
from flashspike.cuda_utils import median_seconds
from flashspike.backends import fused

out = Path(sys.argv[1] if len(sys.argv) > 1 else "diag_out")
sections = os.environ.get("DIAG_SECTIONS", "1 2 3 4").split()
out.mkdir(parents=True, exist_ok=True)
dev = torch.device("cuda")
print("device:", torch.cuda.get_device_name(dev), "| torch", torch.__version__, flush=True)


def per_call_us(fn, calls=500, rounds=7):
    """Median over rounds of the mean of ``calls`` back-to-back calls (host-bound here, so host time)."""
    for _ in range(50):
        fn()
    return median_seconds(fn, dev, rounds, calls) * 1e6


def report(label, fn, **kw):
    print(f"{label:<58} {per_call_us(fn, **kw):8.1f} us", flush=True)


if set(sections) & {"1", "2", "3"}:  # parts 1-3 share their set-up
    # ---------------------------------------------------------------- 1. host cost of a neuron call
    print("\n== 1. host cost per call, T=4, N=4096, float32")
    T, N = 4, 4096
    x = torch.rand(T, N, device=dev)
    xg = x.clone().requires_grad_()


    def fb_builtin():
        xg.grad = None
        (xg * 2.0).sum().backward()


    report("builtin mul + sum + backward", fb_builtin)


    class Empty(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            return torch.empty_like(a)

        @staticmethod
        def backward(ctx, g):
            return torch.empty_like(g)


    def fb_empty_function():
        xg.grad = None
        Empty.apply(xg).sum().backward()


    report("empty autograd.Function + sum + backward", fb_empty_function)
    report("empty autograd.Function, forward only (no grad)", lambda: Empty.apply(x))
    report("torch.empty((4, 4096))", lambda: torch.empty((T, N), device=dev))
    report("torch.empty_like(x)", lambda: torch.empty_like(x))
    report("x.view(4, 4096) ", lambda: x.view(T, N))
    report("x.data_ptr()", lambda: x.data_ptr())
    raw = getattr(torch._C, "_cuda_getCurrentRawStream")
    report("torch._C._cuda_getCurrentRawStream(0)", lambda: raw(0))

    for name in ("cupy", "triton"):
        node = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(), backend=name).to(dev)

        def fwd(node=node):
            node.reset()
            with torch.no_grad():
                node(x)

        def fb(node=node):
            node.reset()
            xg.grad = None
            node(xg).sum().backward()

        report(f"node {name}: forward, no grad", fwd)
        report(f"node {name}: forward + sum + backward (benchmark's call)", fb)
        p = node.params()
        from flashspike import backends

        kernels = backends.get(name).kernel_set(p)
        report(f"{name} launcher forward (no autograd, no save)", lambda k=kernels: k.forward(x, None, p, False, False))
        report(f"{name} launcher forward (save h)", lambda k=kernels: k.forward(x, None, p, True, False))
        _, _, h = kernels.forward(x, None, p, True, False)
        g_scalar = torch.ones((), device=dev).expand(T, N)
        report(f"{name} launcher backward (scalar grad)",
               lambda k=kernels: k.backward(h, g_scalar, None, p, False, False))
        report(f"{name} fused_multi_step no grad",
               lambda k=kernels: fused.fused_multi_step(k, x, 0.0, p, False))

    # The raw CuPy launch, arguments prepared in advance.
    from flashspike.backends import cupy_backend, cuda_source

    ck = cupy_backend.BACKEND.kernels
    p = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan()).params()
    spike, v_out, hh = fused.forward_outputs(x, True, False)
    vec = 4
    function = ck._function(p, x.dtype, (False, True, False, vec), 0, cuda_source.forward_name)
    stream = next(iter(ck._streams.values()))
    args = (x.data_ptr(), 0, spike.data_ptr(), v_out.data_ptr(), hh.data_ptr(), T, N)
    blocks = ((N // vec) + cuda_source.BLOCK - 1) // cuda_source.BLOCK
    report("raw cupy Function call, args ready",
           lambda: function((blocks,), (cuda_source.BLOCK,), args, shared_mem=0, stream=stream))
    import cupy

    report("cupy.cuda.runtime.getDevice()", lambda: cupy.cuda.runtime.getDevice())

    # ---------------------------------------------------------------- 2. cProfile
    print("\n== 2. cProfile, node cupy forward + sum + backward, 3000 calls", flush=True)
    node = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(), backend="cupy").to(dev)


    def fb_node():
        node.reset()
        xg.grad = None
        node(xg).sum().backward()


    for _ in range(100):
        fb_node()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(3000):
        fb_node()
    torch.cuda.synchronize()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    print(text.getvalue()[:6000])

    # ---------------------------------------------------------------- 3. channels_last for the stateless layers
    print("\n== 3. stateless layers of the example net, fwd + bwd on spikes, float16 autocast, b=128 x T=4", flush=True)
    C, B = 128, 512
    torch.backends.cudnn.benchmark = True


    def layers_time(memory_format):
        pool = torch.nn.MaxPool2d(2, 2)
        conv = torch.nn.Conv2d(C, C, 3, padding=1, bias=False).to(dev, memory_format=memory_format)
        bn = torch.nn.BatchNorm2d(C).to(dev, memory_format=memory_format)
        s1 = (torch.rand(B, C, 28, 28, device=dev) > 0.7).half().contiguous(memory_format=memory_format)
        s1.requires_grad_()
        g = torch.randn(B, C, 14, 14, device=dev, dtype=torch.half).contiguous(memory_format=memory_format)
        g2 = torch.randn(B, C, 7, 7, device=dev, dtype=torch.half).contiguous(memory_format=memory_format)

        def step():
            s1.grad = None
            with torch.autocast("cuda", torch.float16):
                y = bn(conv(pool(s1)))
                z = pool(y.detach().requires_grad_())
            torch.autograd.backward([y, z], [g, g2])

        for _ in range(20):
            step()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(100):
            step()
        end.record()
        end.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                step()
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60)
        return start.elapsed_time(end) / 100, table


    for fmt in (torch.contiguous_format, torch.channels_last):
        ms, table = layers_time(fmt)
        print(f"{str(fmt):<28} {ms:.3f} ms per fwd+bwd")
        print(table)


# ---------------------------------------------------------------- 4. the example's training step
print("\n== 4. example training step, eager, -amp -backend cupy", flush=True)
from flashspike.examples import conv_fashion_mnist as ex

args = ex.parse_args(["-T", "4", "-b", "128", "-amp", "-backend", "cupy", "-device", "cuda:0", "-cuda_graph", "off"])
torch.backends.cudnn.benchmark = True  # as the example's main() sets it
cluster = ex.Cluster(args.device)
trainer = ex.Trainer(args, cluster)
g = torch.Generator(device=dev).manual_seed(0)
images = torch.randint(0, 256, (128, 28, 28), dtype=torch.uint8, device=dev, generator=g)
labels = torch.randint(0, 10, (128,), device=dev, generator=g)
targets = F.one_hot(labels, 10).float()
for _ in range(30):
    trainer.train_step(images, targets)
torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(200):
    trainer.train_step(images, targets)
host = (time.perf_counter() - t0) / 200
torch.cuda.synchronize()
wall = (time.perf_counter() - t0) / 200
print(f"host time to enqueue a step {host * 1e3:.3f} ms; wall per step {wall * 1e3:.3f} ms")
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
    for _ in range(20):
        trainer.train_step(images, targets)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=50))
print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70))
prof.export_chrome_trace(str(out / "step_trace.json"))
profiler = cProfile.Profile()
profiler.enable()
for _ in range(200):
    trainer.train_step(images, targets)
torch.cuda.synchronize()
profiler.disable()
text = io.StringIO()
pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
print(text.getvalue()[:7000])
