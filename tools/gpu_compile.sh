#!/usr/bin/env bash
# torch.compile and CUDA graphs on a CUDA machine, for docs/benchmarks.md:
#   1. the gpu-marked tests of tests/test_compile.py, with backends 'cupy' and 'triton' required (a
#      missing one fails instead of being skipped): fullgraph compile against eager, opcheck on CUDA,
#      and a conv SNN training step captured as one CUDA graph and replayed against eager;
#   2. the per-call host overhead of one neuron op at T=4, N=4096, float32 (see OVERHEAD below).
#
#   tools/gpu_compile.sh [OUTDIR]   # from the repository root; OUTDIR defaults to $OUT/compile or ./gpu_compile_out
#
# Step 2 alone, on any machine (CPU too): ONLY=overhead tools/gpu_compile.sh
# Exit status: that of the tests (0 when they all passed).
set -o pipefail
out=${1:-${OUT:+$OUT/compile}}
out=${out:-gpu_compile_out}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
status=0

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader 2>/dev/null
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  python3 -c "import cupy; print('cupy', cupy.__version__)" 2>&1 | tail -1
  python3 -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1
} 2>&1 | tee "$out/environment.txt"

if [ "${ONLY:-}" != overhead ]; then
  echo "== 1. tests/test_compile.py -m gpu" | tee "$out/tests.log"
  FLASHSPIKE_REQUIRE_BACKENDS=cupy,triton python3 -m pytest -q -m gpu -rs --durations=12 tests/test_compile.py \
    2>&1 | tee -a "$out/tests.log"
  status=${PIPESTATUS[0]}
fi

# OVERHEAD. Microseconds per call, the median of 7 rounds of 500 calls, with the device synchronized only at
# the end of each round, so on a GPU the time is the host's while the kernels (microseconds at this size) keep
# up. Paths, each forward alone (no grad) and forward + backward (spike.backward of a fixed gradient):
#   function / null     FusedMultiStep (the eager autograd.Function) with kernels that only allocate outputs
#   graph ops / null    the two custom operators called directly, as a compiled graph calls them (its own
#                       autograd wrapper runs once per graph, not per operator), with the same null kernels
#   operators / null    ops.multi_step called eagerly: the operators under PyTorch's generated autograd Function
#   node / <backend>    MultiStepLIFNode(backend=...) called eagerly, real kernels
#   compiled / <backend> torch.compile(node, fullgraph=True), real kernels (adds Dynamo's guards and
#                       AOTAutograd's wrappers around the operators)
echo "== 2. host overhead per call, T=4, N=4096" | tee "$out/overhead.txt"
python3 - <<'EOF' 2>&1 | tee -a "$out/overhead.txt"
import statistics
import time

import torch

from flashspike import backends, neuron, surrogate
from flashspike.backends import fused, ops

T, N, CALLS, ROUNDS = 4, 4096, 500, 7
device = "cuda" if torch.cuda.is_available() else "cpu"
print("device:", torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "| torch", torch.__version__)


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


def per_call_us(fn):
    for _ in range(50):
        fn()
    rounds = []
    for _ in range(ROUNDS):
        sync()
        t0 = time.perf_counter()
        for _ in range(CALLS):
            fn()
        sync()
        rounds.append((time.perf_counter() - t0) / CALLS * 1e6)
    return statistics.median(rounds)


class NullKernels:
    """The kernel-set contract with no work: outputs are allocated, nothing is computed."""

    def forward(self, x, v_init, p, save_h, store_v_seq):
        steps, n = x.shape
        h = torch.empty_like(x) if save_h else None
        return torch.empty_like(x), x.new_empty((steps, n) if store_v_seq else (n,)), h

    def backward(self, h, grad_spike, grad_v_out, p, store_v_seq, need_grad_v_init, sum_grad_x=False):
        grad_x = h.new_empty(h.shape[1:]) if sum_grad_x else torch.empty_like(h)
        return grad_x, h.new_empty((h.shape[1],)) if need_grad_v_init else None


x = torch.rand(T, N, device=device)
x_grad = x.clone().requires_grad_()
g = torch.ones(T, N, device=device)


def row(label, run, forward_backward=None):
    """``run(x) -> spike`` timed without grad, and with spike.backward (or ``forward_backward()``)."""

    def forward():
        with torch.no_grad():
            run(x)

    forward_backward = forward_backward or (lambda: run(x_grad).backward(g))
    print(f"{label:<22} {per_call_us(forward):9.1f} {per_call_us(forward_backward):11.1f}")


node = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(), backend="torch")
p = node.params()
null = NullKernels()
options = ops.option_string(p)
# Seed the operators' lookup so that backend name 'null' runs the null kernels.
ops._resolved[("null", device, torch.float32, options)] = (null, p)
graph_forward = torch.ops.flashspike.multi_step_forward.default
graph_backward = torch.ops.flashspike.multi_step_backward.default


def graph_ops_forward_backward():
    with torch.no_grad():  # as inside a compiled graph: below autograd
        spike, _, h = graph_forward(x, None, True, False, "null", options)
        graph_backward(h, g, None, False, False, "null", options)


print(f"{'path / kernels':<22} {'fwd us':>9} {'fwd+bwd us':>11}")
row("function / null", lambda x: fused.fused_multi_step(null, x, p.v_rest, p, False)[0])
row("graph ops / null", lambda x: graph_forward(x, None, False, False, "null", options)[0], graph_ops_forward_backward)
row("operators / null", lambda x: ops.multi_step("null", x, p.v_rest, p, False)[0])

names = ["torch"] + (["cupy", "triton"] if device == "cuda" else [])
for name in names:
    try:
        backends.resolve(name, torch.zeros(1, 1, device=device))
    except (ImportError, backends.BackendError) as err:
        print(f"{name}: unavailable ({err})")
        continue
    eager = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(), backend=name)
    row(f"node / {name}", lambda x: (eager.reset(), eager(x))[1])
    compiled_node = neuron.MultiStepLIFNode(surrogate_function=surrogate.ATan(), backend=name)
    # Each node instance and grad mode is a recompile of the same forward: start every backend afresh
    # so the cases together stay under Dynamo's recompile limit (8).
    torch._dynamo.reset()
    compiled = torch.compile(compiled_node, fullgraph=True)
    row(f"compiled / {name}", lambda x: (compiled_node.reset(), compiled(x))[1])
EOF
exit "$status"
