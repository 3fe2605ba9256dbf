#!/usr/bin/env bash
# Backend 'triton' on a CUDA machine: its own tests, the shared parity grid for it, and a quick timing
# (LIF, ATan, N = 2**20, T = 8 and 128, forward under no_grad and forward + y.sum().backward(), float32
# and float16) and the per-call host cost at T = 4, N = 4096, split into the kernels' launches and the
# rest of the call (the same call with kernels that launch nothing).
#
#   tools/gpu_triton.sh [OUTDIR]      # run from the repository root; OUTDIR defaults to $OUT or ./gpu_triton_out
#
# Set SWEEP=1 to add a launch-configuration sweep (BLOCK, num_warps) of the kernels alone. Logs: OUTDIR/triton_tests.txt, OUTDIR/triton_timing.txt.
set -o pipefail
out=${1:-${OUT:-gpu_triton_out}}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # real kernels here, not the CPU interpreter

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader
  python3 -c "import torch, triton, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"
} 2>&1 | tee "$out/triton_env.txt"

SWEEP=${SWEEP:-0} python3 - <<'EOF' 2>&1 | tee "$out/triton_timing.txt"
import os, time

import torch
import triton
from triton.testing import do_bench

from flashspike import neuron, surrogate
from flashspike.backends import triton_backend as tb

dev = torch.device("cuda")
N = 2**20
print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def bench(fn):
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


src = torch.empty(2**28, device=dev)  # 1 GiB of float32
dst = torch.empty_like(src)
copy_tbs = 2 * src.numel() * 4 / bench(lambda: dst.copy_(src)) / 1e9
print(f"device-to-device copy: {copy_tbs:.2f} TB/s (bytes read + written)")
del src, dst


def share(nbytes, ms):
    tbs = nbytes / ms / 1e9
    return f"{tbs:5.2f} TB/s = {100 * tbs / copy_tbs:3.0f}% of copy"


p = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(alpha=2.0)).params()


def per_call_us(fn, n=2000):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


if os.environ.get("SWEEP") == "1":
    print("\n# kernels alone, T=128, N=2**20: (BLOCK, num_warps) -> ms (bandwidth by bytes moved)")
    default = tb.GPU_BLOCK, tb.GPU_NUM_WARPS
    for dtype in (torch.float32, torch.float16):
        b = torch.finfo(dtype).bits // 8
        x = torch.rand(128, N, device=dev, dtype=dtype)
        g_dense = torch.rand_like(x)
        g_scalar = torch.ones((), device=dev, dtype=dtype).expand(128, N)
        for block, warps in [(256, 2), (512, 4), (1024, 4), (1024, 8), (2048, 8)]:
            tb.GPU_BLOCK, tb.GPU_NUM_WARPS = block, warps
            ks = tb.kernel_set(p)
            row = []
            ms = bench(lambda: ks.forward(x, None, p, False, False))
            row.append(f"infer {ms:.3f} ({share(2 * b * x.numel(), ms)})")
            ms = bench(lambda: ks.forward(x, None, p, True, False))
            row.append(f"train-fwd {ms:.3f} ({share(3 * b * x.numel(), ms)})")
            h = ks.forward(x, None, p, True, False)[2]
            ms = bench(lambda: ks.backward(h, g_scalar, None, p, False, False))
            row.append(f"bwd scalar-grad {ms:.3f} ({share(2 * b * x.numel(), ms)})")
            ms = bench(lambda: ks.backward(h, g_dense, None, p, False, False))
            row.append(f"bwd dense-grad {ms:.3f} ({share(3 * b * x.numel(), ms)})")
            print(f"{dtype} BLOCK={block} warps={warps}: " + " | ".join(row))
        del x, g_dense, h
    tb.GPU_BLOCK, tb.GPU_NUM_WARPS = default

print(f"\n# neuron calls, LIF ATan(2), N=2**20 (BLOCK={tb.GPU_BLOCK}, warps={tb.GPU_NUM_WARPS}); ms per call:"
      " median of do_bench (which clears L2 between calls), and back-to-back wall clock (what a loop sees)")
for dtype in (torch.float32, torch.float16):
    b = torch.finfo(dtype).bits // 8
    for steps in (8, 128):
        node = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(alpha=2.0), backend="triton")
        x = torch.rand(steps, N, device=dev, dtype=dtype)

        def infer():
            node.reset()
            with torch.no_grad():
                node(x)

        xg = x.clone().requires_grad_()

        def train():
            node.reset()
            xg.grad = None
            node(xg).sum().backward()

        f_ms, fb_ms = bench(infer), bench(train)
        f_wall, fb_wall = per_call_us(infer, 200) / 1e3, per_call_us(train, 200) / 1e3
        print(f"{str(dtype):14s} T={steps:3d}  fwd {f_ms:.3f} ms ({share(2 * b * x.numel(), f_ms)}; wall {f_wall:.3f})"
              f"   fwd+bwd {fb_ms:.3f} ms ({share(6 * b * x.numel(), fb_ms)}, counting the sum's read;"
              f" wall {fb_wall:.3f})")
        del x, xg

print("\n# host cost per call at T=4, N=4096 (wall clock over 2000 calls, GPU work of microseconds)")
x = torch.rand(4, 4096, device=dev, requires_grad=True)
node = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(alpha=2.0), backend="triton")
ks = tb.kernel_set(node.params())
xd = x.detach()
h = ks.forward(xd, None, node.params(), True, False)[2]
ones = torch.ones((), device=dev).expand(4, 4096)


def train_step():
    node.reset()
    x.grad = None
    node(x).sum().backward()


def infer_step():
    node.reset()
    with torch.no_grad():
        node(x)


print(f"neuron fwd+bwd (y.sum().backward()): {per_call_us(train_step):6.1f} us")
print(f"neuron fwd under no_grad:            {per_call_us(infer_step):6.1f} us")


class NoLaunch:
    """Stands in for a jitted kernel: `kernel[grid](...)` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **options: None


real_sets = dict(tb._kernel_sets)
for key, kernels in real_sets.items():  # the same calls and allocations, launches left out
    stub = tb._kernel_sets[key] = object.__new__(tb.TritonKernels)
    stub.forward_kernel, stub.backward_kernel, stub.interpret = NoLaunch(), NoLaunch(), kernels.interpret
print(f"  the same, kernels not launched:    {per_call_us(train_step):6.1f} us fwd+bwd, "
      f"{per_call_us(infer_step):6.1f} us fwd")
tb._kernel_sets.update(real_sets)
print(f"forward kernel launch alone:         {per_call_us(lambda: ks.forward(xd, None, node.params(), False, False)):6.1f} us")
print(f"backward kernel launch alone:        {per_call_us(lambda: ks.backward(h, ones, None, node.params(), False, False)):6.1f} us")
print(f"torch x.sum() (one small op):        {per_call_us(lambda: xd.sum()):6.1f} us")
EOF
timing_rc=$?

# xdist spreads the many small kernel compilations over processes.
workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
python3 -m pytest -q -p no:cacheprovider $workers tests/test_triton_backend.py 2>&1 | tee "$out/triton_tests.txt"
tests_rc=$?
python3 -m pytest -q -p no:cacheprovider $workers tests/test_parity.py -k triton 2>&1 | tee -a "$out/triton_tests.txt"
parity_rc=$?

echo "tests rc=$tests_rc parity rc=$parity_rc timing rc=$timing_rc" | tee -a "$out/triton_env.txt"
[ "$tests_rc" = 0 ] && [ "$parity_rc" = 0 ] && [ "$timing_rc" = 0 ]
