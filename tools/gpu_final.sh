#!/usr/bin/env bash
# A last GPU check (peer wheels in .whl, Fashion-MNIST in .device_data): the whole test suite
# with both kernel backends required, the example's step time eager and captured, a full 64-epoch run of
# the default command, and a profile of the eager step. Logs under $OUT/final.
set -u
out=${OUT:-.}/final
mkdir -p "$out"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
unset TRITON_INTERPRET
CHECK_LIMIT=${CHECK_LIMIT:-200} PART=check TAG=_final bash tools/gpu_all.sh
export PYTHONPATH=src
data=.device_data/fashion-mnist
train="python3 -m flashspike.examples.conv_fashion_mnist -T 4 -b 128 -opt SGD -lr 0.1 -amp -cupy -data_dir $data"
{
  $train -cuda_graph off -bench_steps 200 | grep '^bench:'
  $train -bench_steps 200 | grep '^bench:'
} 2>&1 | tee "$out/steps.txt"
started=$(date +%s.%N)
$train -epochs "${EPOCHS:-64}" -out_dir /tmp/final_runs > "$out/default_run.txt" 2>&1
echo "default run exit $?, wall $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$started" "$(date +%s.%N)") s" \
  | tee -a "$out/default_run.txt"
grep -E "^(backend|note)|Warning" "$out/default_run.txt" | cut -c1-200
grep -E "^epoch=(0|1|2|63)," "$out/default_run.txt"
python3 - "$out/default_run.txt" <<'PY'
import re, statistics, sys
lines = [dict(re.findall(r"(\w+)=([\d.]+)", l)) for l in open(sys.argv[1]) if l.startswith("epoch=")]
if lines:
    train = [float(l["train_time"]) for l in lines[1:]] or [float(lines[0]["train_time"])]
    print(f"epochs {len(lines)}, max_test_acc {max(float(l['test_acc']) for l in lines):.4f}, "
          f"steady train epoch {statistics.median(train):.3f} s, epochs with tests {sum(float(l['total_time']) for l in lines):.1f} s")
PY
DIAG_SECTIONS=4 timeout 90 python3 tools/gpu_diag.py /tmp/diag > "$out/diag4.txt" 2>&1
head -4 "$out/diag4.txt" | tail -1
