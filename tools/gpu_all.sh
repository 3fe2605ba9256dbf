#!/usr/bin/env bash
# The combined GPU run on a CUDA machine (peer wheels in .whl, Fashion-MNIST in .device_data):
#   PART=check    the whole test suite on the GPU (kernel backends required, not skipped)
#   PART=bench    the neuron benchmark with the peers, and the host-overhead measurement
#   PART=example  the Fashion-MNIST example (tools/gpu_example.sh; SECTIONS picks its runs): step bench, full
#                 runs eager and -cuda_graph, single-step baseline, -compile, torchrun 1 vs 2
# Each part writes its logs under one work folder that is packed into $OUT/gpu_<part>.tgz (the tool
# brings back few files), and prints a short summary to stdout.
set -u
part=${PART:-check}
work=/tmp/fs_gpu_$part${TAG:-}
rm -rf "$work" && mkdir -p "$work"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
unset TRITON_INTERPRET
pack() { tar czf "${OUT:-.}/gpu_$part${TAG:-}.tgz" -C "$work" . ; }
trap pack EXIT

peers=/tmp/fs_peers
if ls .whl/*.whl >/dev/null 2>&1; then  # SpikingJelly and snnTorch, for comparison only
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$peers" .whl/*.whl
fi
export PYTHONPATH=src:$peers

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, cupy, numpy, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| cupy', cupy.__version__, '| numpy', numpy.__version__)"
} 2>&1 | tee "$work/environment.txt"

case $part in
check)
  FLASHSPIKE_REQUIRE_BACKENDS=cupy,triton timeout "${CHECK_LIMIT:-540}" python3 -m pytest -q -p no:cacheprovider -n 16 -rfEs \
    --durations=15 tests > "$work/tests.txt" 2>&1
  echo "pytest exit: $?" | tee -a "$work/tests.txt"
  grep -E "passed|failed|error" "$work/tests.txt" | tail -5
  grep -E "^(FAILED|ERROR)" "$work/tests.txt" | head -40
  grep -E "^SKIPPED" "$work/tests.txt" | head -20
  ;;
bench)
  python3 -m flashspike.benchmarks.neuron --peers --out "$work/bench" > "$work/bench.txt" 2>&1
  echo "benchmark exit: $?"
  cat "$work/bench.txt"
  ONLY=overhead bash tools/gpu_compile.sh "$work/compile" > /dev/null 2>&1
  cat "$work/compile/overhead.txt"
  ;;
example)
  if [ "${EXAMPLE_TESTS:-1}" = 1 ]; then  # PART=check runs them too
    timeout 90 python3 -m pytest -q -p no:cacheprovider -m gpu -rfEs tests/test_example_compile_graph.py \
      > "$work/example_gpu_tests.txt" 2>&1
    echo "example GPU tests exit: $?"; tail -3 "$work/example_gpu_tests.txt"
  fi
  # Bounded, so that the logs are packed even if the runs take longer than planned.
  EPOCHS=${EPOCHS:-64} timeout "${EXAMPLE_LIMIT:-460}" bash tools/gpu_example.sh "$work/example" > "$work/example.txt" 2>&1
  echo "example exit: $?"
  grep -vE "^epoch=([1-9]|[1-5][0-9]|6[0-2]), " "$work/example.txt" | tail -60
  ;;
esac
