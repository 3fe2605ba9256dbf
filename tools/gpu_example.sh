#!/usr/bin/env bash
# The Fashion-MNIST example on a CUDA machine, measured for docs/benchmarks.md:
#   1. one training step (b=128, T=4, float16 autocast, images already on the GPU): time and peak memory,
#      multi-step with -backend $BACKEND and the single-step baseline;
#   2. the full run  -T 4 -b 128 -epochs $EPOCHS -opt SGD -lr 0.1 -amp -backend $BACKEND -cuda_graph off (eager);
#      2b. the same run as the command's default, -cuda_graph auto (the step replayed from a CUDA graph);
#   3. the single-step baseline (-step_mode s) for $S_EPOCHS epochs: its steady epoch time;
#      3b. -compile for $COMPILE_EPOCHS epochs: its steady epoch time;
#   4. torchrun on 1 and on 2 GPUs (NCCL, -b 128 per process) for $DDP_EPOCHS epochs: images/s.
# Then a summary (summary.txt) and the curves of runs 2, 2b and 3 (accuracy.png, loss.png).
#
#   tools/gpu_example.sh [OUTDIR]   # from the repository root; OUTDIR defaults to $OUT/example or ./gpu_example_out
#
# The data: $DATA (default .device_data/fashion-mnist, the four files of Debian's dataset-fashion-mnist),
# else /usr/share/datasets/fashion-mnist. Shorter check: EPOCHS=3 S_EPOCHS=2 DDP_EPOCHS=2 tools/gpu_example.sh
# EXTRA is added to every run's flags (a CPU dry run: EXTRA="-device cpu -channels 4 -max_batches 3").
set -o pipefail
out=${1:-${OUT:+$OUT/example}}
out=${out:-gpu_example_out}
runs=${RUNS:-/tmp/flashspike_example_runs}  # checkpoints (~100 MB each) stay out of $out
EPOCHS=${EPOCHS:-64} S_EPOCHS=${S_EPOCHS:-4} DDP_EPOCHS=${DDP_EPOCHS:-4} BENCH_STEPS=${BENCH_STEPS:-200}
COMPILE_EPOCHS=${COMPILE_EPOCHS:-4}
SECTIONS=${SECTIONS:-steps full cg single compile ddp}  # which of the runs below to make
BACKEND=${BACKEND:-auto}
DATA=${DATA:-.device_data/fashion-mnist}
[ -d "$DATA" ] || DATA=/usr/share/datasets/fashion-mnist
mkdir -p "$out" "$runs"
export PYTHONPATH=src PYTHONUNBUFFERED=1
# NVLink multicast stays off on shared machines.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
log="$out/gpu_example.log"
flags="-T 4 -b 128 -opt SGD -lr 0.1 -amp -data_dir $DATA ${EXTRA:-}"
train="python3 -m flashspike.examples.conv_fashion_mnist $flags"
torchrun="python3 -m torch.distributed.run --standalone"

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  python3 -c "import cupy; print('cupy', cupy.__version__)" 2>&1 | tail -1
  python3 -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1
  echo "data: $DATA; epochs: full $EPOCHS, single-step $S_EPOCHS, torchrun $DDP_EPOCHS; backend: $BACKEND"

  want() { [[ " $SECTIONS " == *" $1 "* ]]; }
  if want steps; then
  echo "== 1. one training step"
  $train -backend "$BACKEND" -cuda_graph off -bench_steps "$BENCH_STEPS" | grep '^bench:'
  $train -backend "$BACKEND" -bench_steps "$BENCH_STEPS" | grep '^bench:'  # -cuda_graph auto: captured
  $train -backend "$BACKEND" -memory_format contiguous -cuda_graph off -bench_steps "$BENCH_STEPS" | grep '^bench:'
  $train -backend "$BACKEND" -memory_format contiguous -bench_steps "$BENCH_STEPS" | grep '^bench:'
  $train -step_mode s -bench_steps "$BENCH_STEPS" | grep '^bench:'
  fi

  if want full; then
  echo "== 2. full run, multi-step, eager steps (-cuda_graph off)"
  rm -rf "$runs/m" && $train -backend "$BACKEND" -cuda_graph off -epochs "$EPOCHS" -out_dir "$runs/m" \
    | grep -E '^(backend|log folder|epoch=)'
  fi

  if want cg; then
  echo "== 2b. full run, multi-step, the default (-cuda_graph auto: captured)"
  started=$(date +%s.%N)
  rm -rf "$runs/cg" && $train -backend "$BACKEND" -epochs "$EPOCHS" -out_dir "$runs/cg" \
    | grep -E '^(backend|note|log folder|epoch=)'
  echo "cuda_graph run wall time: $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$started" "$(date +%s.%N)") s"
  fi

  if want single; then
  echo "== 3. single-step baseline"
  rm -rf "$runs/s" && $train -step_mode s -epochs "$S_EPOCHS" -out_dir "$runs/s" | grep -E '^(backend|log folder|epoch=)'
  fi

  if want compile; then
  echo "== 3b. -compile, $COMPILE_EPOCHS epochs (the first includes compiling)"
  rm -rf "$runs/compile" && $train -backend "$BACKEND" -compile -epochs "$COMPILE_EPOCHS" -out_dir "$runs/compile" \
    | grep -E '^(backend|log folder|epoch=)'
  fi

  want ddp && for gpus in 1 2; do
    echo "== 4. torchrun, $gpus GPU(s)"
    rm -rf "$runs/ddp$gpus" && $torchrun --nproc_per_node=$gpus -m flashspike.examples.conv_fashion_mnist \
      $flags -backend "$BACKEND" -epochs "$DDP_EPOCHS" -out_dir "$runs/ddp$gpus" | grep -E '^(backend|epoch=)'
  done
} 2>&1 | tee "$log"

# The summary: steady epochs are all but the first (compilation, cuDNN's search, allocator warm-up).
python3 - "$runs" "$log" <<'EOF' 2>&1 | tee "$out/summary.txt"
import glob, json, re, statistics, sys

runs, log = sys.argv[1], sys.argv[2]


def records(kind):
    files = glob.glob(f"{runs}/{kind}/*/metrics.jsonl")
    return [json.loads(line) for line in open(files[0])] if files else []


def steady(rs, key):
    values = [r[key] for r in rs[1:]] or [r[key] for r in rs]
    return statistics.median(values) if values else float("nan")


text = open(log).read()
for line in re.findall(r"^bench: .*$", text, re.M):
    print(line)
m, s, cg, compiled = records("m"), records("s"), records("cg"), records("compile")
if m:
    print(f"multi-step, eager steps: {len(m)} epochs, max_test_acc={max(r['test_acc'] for r in m):.4f}, "
          f"steady train epoch {steady(m, 'train_time'):.3f} s ({steady(m, 'train_speed'):.0f} images/s), "
          f"first epoch {m[0]['train_time']:.3f} s")
if cg:
    wall = re.findall(r"^cuda_graph run wall time: ([\d.]+) s$", text, re.M)
    print(f"multi-step, default (captured step): {len(cg)} epochs, max_test_acc={max(r['test_acc'] for r in cg):.4f}, "
          f"steady train epoch {steady(cg, 'train_time'):.3f} s ({steady(cg, 'train_speed'):.0f} images/s), "
          f"first epoch {cg[0]['train_time']:.3f} s (warm-up and capture), "
          f"epochs with test passes {sum(r['total_time'] for r in cg):.1f} s, "
          f"whole command {wall[0] if wall else 'nan'} s (process start and data loading included)")
if s:
    print(f"single-step: {len(s)} epochs, steady train epoch {steady(s, 'train_time'):.3f} s "
          f"({steady(s, 'train_speed'):.0f} images/s)")
if compiled:
    print(f"multi-step -compile: {len(compiled)} epochs, steady train epoch {steady(compiled, 'train_time'):.3f} s, "
          f"first epoch {compiled[0]['train_time']:.3f} s (compiling), "
          f"test_acc by epoch {[round(r['test_acc'], 4) for r in compiled]}")
if m and s:
    print(f"multi-step epoch / single-step epoch = {steady(m, 'train_time') / steady(s, 'train_time'):.1%} (eager)"
          + (f", {steady(cg, 'train_time') / steady(s, 'train_time'):.1%} (default, captured)" if cg else ""))
speeds = {g: steady(records(f"ddp{g}"), "train_speed") for g in (1, 2)}
if records("ddp1"):
  print(f"torchrun: 1 GPU {speeds[1]:.0f} images/s, 2 GPUs {speeds[2]:.0f} images/s, "
      f"scaling {speeds[2] / speeds[1]:.2f}x")
EOF
cp "$runs"/m/*/metrics.jsonl "$out/metrics_m.jsonl" 2>/dev/null
cp "$runs"/s/*/metrics.jsonl "$out/metrics_s.jsonl" 2>/dev/null
cp "$runs"/cg/*/metrics.jsonl "$out/metrics_cg.jsonl" 2>/dev/null
shopt -s nullglob  # a run that failed has no folder: draw the others
python3 -m flashspike.examples.plot "$runs"/m/* "$runs"/cg/* "$runs"/s/* -o "$out" 2>&1 | tee -a "$log"
