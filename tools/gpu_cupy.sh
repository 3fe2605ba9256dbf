#!/usr/bin/env bash
# Backend 'cupy' on a CUDA machine: the environment (and whether NVRTC finds cuda_fp16.h), the cupy
# tests and the shared parity grid for cupy, the kernels' bandwidth at T=128 (with a sweep of the time
# unroll and block size), the per-call host cost at T=4, N=4096, and a quick run of the benchmark
# (T = 8 and 128, float32 and float16, with SpikingJelly and snnTorch when their wheels are in .whl/).
#
#   tools/gpu_cupy.sh [OUTDIR]      # from the repository root; OUTDIR defaults to $OUT or ./gpu_cupy_out
#
# Logs: OUTDIR/cupy_env.txt, cupy_timing.txt, cupy_tests.txt, cupy_bench.txt; OUTDIR/bench/ holds the
# benchmark's JSON and charts. Set QUICK=0 for the benchmark's full T list.
set -o pipefail
out=${1:-${OUT:-gpu_cupy_out}}
mkdir -p "$out/bench"
export PYTHONUNBUFFERED=1
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl >/dev/null 2>&1; then  # the peers, pure-Python wheels (see docs/benchmarks_cupy.md)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/fs_peers .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/fs_peers
fi

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
  python3 - <<'EOF'
import cupy, numpy, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "| cupy", cupy.__version__,
      "nvrtc", cupy.cuda.nvrtc.getVersion(), "| numpy", numpy.__version__)
try:  # the kernels include no header; this only records whether CuPy's NVRTC would find them
    cupy.RawKernel('#include <cuda_fp16.h>\n#include <cuda_bf16.h>\nextern "C" __global__ void k(__half* a) '
                   '{ a[0] = __float2half(1.0f); }', "k").compile()
    print("cuda_fp16.h / cuda_bf16.h: resolved by CuPy's NVRTC")
except Exception as error:
    print("cuda_fp16.h / cuda_bf16.h: NOT resolved by CuPy's NVRTC:", str(error).splitlines()[0][:200])
EOF
} 2>&1 | tee "$out/cupy_env.txt"

workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
export FLASHSPIKE_REQUIRE_BACKENDS=cupy  # a cupy that fails to load fails the tests instead of skipping
python3 -m pytest -q -p no:cacheprovider -rfEs --durations=8 $workers tests/test_cupy_backend.py \
  2>&1 | tee "$out/cupy_tests.txt"
tests_rc=$?
python3 -m pytest -q -p no:cacheprovider -rfE --durations=5 $workers tests/test_parity.py -k cupy \
  2>&1 | tee -a "$out/cupy_tests.txt"
parity_rc=$?

python3 - <<'EOF' 2>&1 | tee "$out/cupy_timing.txt"
import time

import torch
from triton.testing import do_bench

from flashspike import neuron, surrogate
from flashspike.backends import cuda_source, cupy_backend

dev = torch.device("cuda")
N = 2**20
print(f"{torch.cuda.get_device_name()} | {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def bench(fn):
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


a = torch.empty(2**28, device=dev)  # 1 GiB of float32
b = torch.empty_like(a)
copy_tbs = 2 * a.numel() * 4 / bench(lambda: b.copy_(a)) / 1e9
print(f"device-to-device copy: {copy_tbs:.2f} TB/s (bytes read + written)")
del a, b


def share(nbytes, ms):
    tbs = nbytes / ms / 1e9
    return f"{tbs:4.2f} TB/s {100 * tbs / copy_tbs:3.0f}%"


p = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(alpha=2.0)).params()
print("\n# kernels alone, T=128, N=2**20, LIF ATan(2): ms (bandwidth by the bytes each must move)")
default_unroll, default_block = cuda_source.UNROLL, cuda_source.BLOCK
for unroll, block in [(1, 256), (2, 256), (4, 256), (2, 128), (2, 512)]:
    cuda_source.UNROLL, cuda_source.BLOCK = unroll, block
    ks = cupy_backend.CupyKernels()  # fresh caches: the unroll is part of the source
    for dtype in (torch.float32, torch.float16):
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
        print(f"UNROLL={unroll} BLOCK={block} {str(dtype)[6:]:8s}: " + " | ".join(row))
        del x, g_dense, h
cuda_source.UNROLL, cuda_source.BLOCK = default_unroll, default_block


def per_call_us(fn, n=2000):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


print("\n# host cost per call, T=4, N=4096 (wall clock over 2000 calls; GPU work of microseconds)")
x = torch.rand(4, 4096, device=dev, requires_grad=True)
node = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(alpha=2.0), backend="cupy")


def train_step():
    node.reset()
    x.grad = None
    node(x).sum().backward()


def infer_step():
    node.reset()
    with torch.no_grad():
        node(x)


print(f"neuron fwd+bwd (y.sum().backward()): {per_call_us(train_step):6.1f} us   (target <= 100 us)")
print(f"neuron fwd under no_grad:            {per_call_us(infer_step):6.1f} us")
kernels = cupy_backend.BACKEND.kernels
real_launch = kernels._launch
kernels._launch = lambda *args: None  # the same calls and allocations, no kernel launched
print(f"  the same, kernels not launched:    {per_call_us(train_step):6.1f} us fwd+bwd, "
      f"{per_call_us(infer_step):6.1f} us fwd")
kernels._launch = real_launch
xd = x.detach()
print(f"forward launcher alone (no autograd):{per_call_us(lambda: kernels.forward(xd, None, p, False, False)):6.1f} us")
print(f"torch x.sum() (one small op):        {per_call_us(lambda: xd.sum()):6.1f} us")
EOF
timing_rc=$?

if [ "${QUICK:-1}" = 1 ]; then steps="8 128"; repeats=5; else steps="8 16 32 64 128"; repeats=10; fi
python3 -m flashspike.benchmarks.neuron --peers --t $steps --repeats $repeats --out "$out/bench" \
  2>&1 | tee "$out/cupy_bench.txt"
bench_rc=$?

echo "tests rc=$tests_rc parity rc=$parity_rc timing rc=$timing_rc bench rc=$bench_rc" | tee -a "$out/cupy_env.txt"
[ "$tests_rc" = 0 ] && [ "$parity_rc" = 0 ] && [ "$timing_rc" = 0 ] && [ "$bench_rc" = 0 ]
