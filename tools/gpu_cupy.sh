#!/usr/bin/env bash
# Backend 'cupy' on a CUDA machine: the environment (and whether NVRTC finds cuda_fp16.h), the cupy
# tests and the shared parity grid for cupy, the timings of tools/gpu_cupy_timing.py (kernels alone at
# T=128 per dtype and time unroll, host cost per call at T=4, N=4096, a profile of forward + backward
# at T=8), and a quick run of the benchmark (T = 8 and 128, float32 and float16, with SpikingJelly and
# snnTorch when their wheels are in .whl/: pip download --no-deps -d .whl spikingjelly==0.0.0.0.14
# snntorch==1.0.0).
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

python3 tools/gpu_cupy_timing.py 2>&1 | tee "$out/cupy_timing.txt"
timing_rc=$?

if [ "${QUICK:-1}" = 1 ]; then steps="8 128"; repeats=5; else steps="8 16 32 64 128"; repeats=10; fi
python3 -m flashspike.benchmarks.neuron --peers --t $steps --repeats $repeats --out "$out/bench" \
  2>&1 | tee "$out/cupy_bench.txt"
bench_rc=$?

echo "tests rc=$tests_rc parity rc=$parity_rc timing rc=$timing_rc bench rc=$bench_rc" | tee -a "$out/cupy_env.txt"
[ "$tests_rc" = 0 ] && [ "$parity_rc" = 0 ] && [ "$timing_rc" = 0 ] && [ "$bench_rc" = 0 ]
