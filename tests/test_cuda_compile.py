"""The generated CUDA source without a GPU (CPU CI).

1. nvcc compiles the kernels for sm_80 and sm_90, one translation unit per architecture, and ptxas
   reports no register spills. The source of one variant is the product of two independent parts:
   the neuron's step statements (one form per neuron option set) and the template around them (one
   instantiation per dtype and per-call switch set). So the unit holds every option set's step in
   one instantiation, and every (dtype, switch set) instantiation around one option set: every
   generated piece of text is compiled in every context it can appear in, at a cost that CI can
   afford (the full product would be about 11,000 kernels).
2. The same template, compiled by g++ with a small CUDA shim (threads run one after another), is
   driven through the CuPy backend's own host code (:class:`CupyKernels`: switch choice, output
   allocation, gradient modes, vector widths) and compared with the 'torch' reference, so the loop,
   the loads and stores and every switch are checked on the CPU before any GPU sees them.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import itertools
import math
import os
import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest
import torch

from flashspike import surrogate
from flashspike.backends import cuda_source as src
from flashspike.backends.cupy_backend import CompiledKernels, CupyKernels
from custom_surrogate import every_surrogate
from grid import Cell, far_from_ties, option_grid


def every_option_set():
    """One NeuronParams per distinct form of the generated step (constants do not change the form): every
    neuron and option set with one surrogate, and every surrogate (spiking and smooth, the user-defined one
    too) in a hard-reset and a soft-reset LIF step (its text is the same in any other option set)."""
    for cell in option_grid():
        yield cell.params()
    for sg, v_reset in itertools.product(every_surrogate(True) + every_surrogate(False), (0.0, None)):
        yield Cell(v_reset=v_reset, surrogate=sg).params()


def _translation_unit(option_sets, instantiations_of) -> tuple[str, int]:
    """PRELUDE, one namespace per option set, and a table that instantiates the named kernels."""
    parts, names = [src.PRELUDE], []
    for index, p in enumerate(option_sets):
        parts.append(f"namespace fs_{index} {{\n{src.kernel_source(p)}\n}}  // namespace fs_{index}\n")
        names += [f"fs_{index}::{name}" for name in instantiations_of(index)]
    table = ",\n".join(f"    (void*)&{name}" for name in names)
    parts.append(f"void* fs_every_kernel[] = {{\n{table}\n}};\n")
    return "".join(parts), len(names)


def _compile_unit() -> tuple[str, int]:
    option_sets = list(every_option_set())

    def instantiations_of(index):
        if index == 0:  # every dtype and switch set around one option set
            for dtype in src.STORAGE_TYPES:
                yield from (src.forward_name(dtype, *s) for s in src.forward_flag_sets(dtype))
                yield from (src.backward_name(dtype, *s) for s in src.backward_flag_sets(dtype, option_sets[0]))
        else:  # every option set's step, with every switch on and vectorized accesses
            p = option_sets[index]
            yield src.forward_name(torch.float32, True, True, True, False, False, True, 4)
            yield src.forward_name(torch.float32, True, True, False, True, False, False, 4)
            yield src.backward_name(torch.float32, src.GRAD_DENSE, src.GRAD_DENSE, True, True, False, False,
                                    src.backward_vector_width(torch.float32, p))
            yield src.backward_name(torch.float32, src.GRAD_DENSE, src.GRAD_DENSE, True, True, False, True,
                                    src.backward_vector_width(torch.float32, p))
            if p.backward_reads_v_prev:  # its narrower backward access in 16 bits too
                yield src.backward_name(torch.float16, src.GRAD_DENSE, src.GRAD_DENSE, True, True, False, False,
                                        src.backward_vector_width(torch.float16, p))

    return _translation_unit(option_sets, instantiations_of)


def _find_nvcc():
    return shutil.which("nvcc") or next(
        (path for path in ("/usr/local/cuda/bin/nvcc",) if os.access(path, os.X_OK)), None)


@pytest.fixture(scope="module")
def nvcc_builds(tmp_path_factory):
    """Starts nvcc for both architectures at once (they run in parallel); yields arch -> process."""
    nvcc = _find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (on PATH or /usr/local/cuda/bin): the CUDA compile check needs the CUDA toolkit")
    folder = tmp_path_factory.mktemp("nvcc")
    code, count = _compile_unit()
    (folder / "kernels.cu").write_text(code)
    processes = {
        arch: subprocess.Popen(
            [nvcc, "-cubin", f"-arch={arch}", "-Xptxas", "-v", "-o", str(folder / f"{arch}.cubin"),
             str(folder / "kernels.cu")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for arch in ("sm_80", "sm_90")
    }
    yield processes, count
    for process in processes.values():
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles_every_variant(nvcc_builds, arch):
    processes, count = nvcc_builds
    log, _ = processes[arch].communicate(timeout=600)
    assert processes[arch].returncode == 0, log[-5000:]
    # ptxas -v reports each kernel it compiled; every one must be there, none spilling registers.
    entries = re.findall(r"Compiling entry function '([^']+)'", log)
    assert len(entries) == count, f"{len(entries)} kernels compiled, {count} instantiated"
    spills = [line for line in log.splitlines() if "spill" in line and not re.search(r"\b0 bytes spill stores, 0 bytes spill loads", line)]
    assert not spills, "\n".join(spills[:10])
    assert "warning" not in log.lower(), log[-5000:]


# ---------------------------------------------------------------------------------------------
# 2. The template run on the CPU.

# Just enough of CUDA for the kernels to compile as C++: every thread of the grid runs in turn.
_SHIM = r"""
#include <cmath>
#include <cstring>
#define FS_HOST_EMULATION
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
struct fs_dim3 { unsigned int x, y, z; };
static fs_dim3 blockIdx, blockDim, threadIdx;
struct alignas(8) uint2 { unsigned int x, y; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
// CUDA's sin(pi x) and cos(pi x), which C++ lacks: pi x in double, as exact as the device's reduction.
inline float sinpif(float x) { return (float)std::sin(3.14159265358979323846 * (double)x); }
inline float cospif(float x) { return (float)std::cos(3.14159265358979323846 * (double)x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
"""

# The storage conversions of PRELUDE, for the host (the device spells them in PTX): float16 through
# the compiler's _Float16, bfloat16 rounded to nearest even by bit operations.
_HOST_CONVERSIONS = r"""
template <> inline float fs_bits_to_float<float>(unsigned int bits) { return __uint_as_float(bits); }
template <> inline float fs_bits_to_float<fs_half>(unsigned int bits) {
    const unsigned short b = (unsigned short)bits; _Float16 h; std::memcpy(&h, &b, 2); return (float)h;
}
template <> inline float fs_bits_to_float<fs_bf16>(unsigned int bits) { return __uint_as_float(bits << 16); }
template <> inline unsigned int fs_float_to_bits<float>(float f) { return __float_as_uint(f); }
template <> inline unsigned int fs_float_to_bits<fs_half>(float f) {
    const _Float16 h = (_Float16)f; unsigned short b; std::memcpy(&b, &h, 2); return b;
}
template <> inline unsigned int fs_float_to_bits<fs_bf16>(float f) {
    const unsigned int u = __float_as_uint(f);
    return (u & 0x7fffffffu) > 0x7f800000u ? ((u >> 16) | 0x40u) : ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
"""

_GRID = r"""
template <typename T, typename K>
void fs_grid_forward(K kernel, long long blocks, unsigned long long a0, unsigned long long a1, unsigned long long a2,
                     unsigned long long a3, unsigned long long a4, unsigned long long decay, unsigned long long scale,
                     unsigned long long shift, unsigned long long bits, unsigned long long addend, long long steps,
                     long long n, long long x_step, long long channel_stride, long long channels) {
    blockDim.x = FS_BLOCK;
    for (long long b = 0; b < blocks; ++b) {
        blockIdx.x = (unsigned int)b;
        for (unsigned int t = 0; t < FS_BLOCK; ++t) {
            threadIdx.x = t;
            kernel((T*)a0, (T*)a1, (T*)a2, (T*)a3, (T*)a4, (const float*)decay, (const float*)scale,
                   (const float*)shift, (unsigned char*)bits, (T*)addend, steps, n, x_step, channel_stride,
                   channels);
        }
    }
}
template <typename T, typename K>
void fs_grid_backward(K kernel, long long blocks, unsigned long long a0, unsigned long long a1, unsigned long long a2,
                      unsigned long long a3, unsigned long long a4, unsigned long long v_init, unsigned long long decay,
                      unsigned long long grad_w, unsigned long long x, unsigned long long scale,
                      unsigned long long shift, long long steps, long long n, long long x_step,
                      long long channel_stride, long long channels) {
    blockDim.x = FS_BLOCK;
    for (long long b = 0; b < blocks; ++b) {
        blockIdx.x = (unsigned int)b;
        for (unsigned int t = 0; t < FS_BLOCK; ++t) {
            threadIdx.x = t;
            kernel((T*)a0, (T*)a1, (T*)a2, (T*)a3, (T*)a4, (T*)v_init, (const float*)decay, (float*)grad_w, (T*)x,
                   (const float*)scale, (const float*)shift, steps, n, x_step, channel_stride, channels);
        }
    }
}
"""

# The launch arguments after the block count: (pointers, sizes) of each kernel.
_ARGUMENTS = {"fs_forward": (("a0", "a1", "a2", "a3", "a4", "decay", "scale", "shift", "bits", "addend"),
                             ("steps", "n", "x_step", "channel_stride", "channels")),
              "fs_backward": (("a0", "a1", "a2", "a3", "a4", "v_init", "decay", "grad_w", "x", "scale", "shift"),
                              ("steps", "n", "x_step", "channel_stride", "channels"))}


def _entry_types(name: str) -> list:
    pointers, sizes = _ARGUMENTS[name.split("<")[0]]
    return [ctypes.c_longlong] + [ctypes.c_ulonglong] * len(pointers) + [ctypes.c_longlong] * len(sizes)


def _emulation_source(option_sets, cases):
    """The C++ text holding every switch set for each (option index, dtype) case, and its entry symbols."""
    # PRELUDE declares the conversions; the host definitions follow it, before any kernel uses them.
    parts = [_SHIM, src.PRELUDE, _HOST_CONVERSIONS, f"#define FS_BLOCK {src.BLOCK}\n", _GRID]
    entries = {}
    for index, p in enumerate(option_sets):
        parts.append(f"namespace fs_{index} {{\n{src.kernel_source(p)}\n}}\n")
        for dtype in (dtype for option, dtype in cases if option == index):
            names = [src.forward_name(dtype, *s) for s in src.forward_flag_sets(dtype)]
            names += [src.backward_name(dtype, *s) for s in src.backward_flag_sets(dtype, p)]
            for name in names:
                symbol = f"fs_entry_{len(entries)}"
                kernel = name.split("<")[0]
                pointers, sizes = _ARGUMENTS[kernel]
                parameters = [f"unsigned long long {p}" for p in pointers] + [f"long long {size}" for size in sizes]
                parts.append(
                    f'extern "C" void {symbol}(long long blocks, {", ".join(parameters)}) '
                    f"{{ fs_grid_{kernel[3:]}<{src.STORAGE_TYPES[dtype]}>(&fs_{index}::{name}, blocks, "
                    + ", ".join(pointers + sizes) + "); }\n")
                entries[(index, name)] = symbol
    return "".join(parts), entries


def _emulation_library(folder, option_sets, cases):
    """Compiles every switch set for each (option index, dtype) case; returns (library, entries).

    g++ takes minutes over this source, so pytest-xdist's workers share one build: the first to need it
    compiles it under a file lock in ``folder`` (their common temporary folder), named by the source's
    hash; the others wait for it and load the same library."""
    text, entries = _emulation_source(option_sets, cases)
    library = folder / f"emulated-{hashlib.sha256(text.encode()).hexdigest()[:16]}.so"
    with open(folder / "emulated.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not library.exists():
            source = library.with_suffix(".cpp")
            source.write_text(text)
            partial = library.with_suffix(f".{os.getpid()}.part")
            subprocess.run(["g++", "-std=c++17", "-O1", "-fno-strict-aliasing", "-Wno-unknown-pragmas", "-shared",
                            "-fPIC", "-o", str(partial), str(source)], check=True, capture_output=True, text=True)
            partial.rename(library)  # whole or absent: a build cut short leaves no library behind
    return ctypes.CDLL(str(library)), entries


class EmulatedCompiled(CompiledKernels):
    """CompiledKernels with the compile and launch steps replaced by the g++ build: everything else, the
    choice of switches, vector width, gradient modes and outputs, is the backend's own code (CupyKernels)."""

    def __init__(self, library, entries, option_sets):
        super().__init__()
        self.library, self.entries = library, entries
        self.index_of = {p.key: i for i, p in enumerate(option_sets)}
        self.launched = []

    def function(self, params_key, source, dtype, switches, device_index, name_of):
        name = name_of(dtype, *switches)
        self.launched.append(name)
        entry = getattr(self.library, self.entries[(self.index_of[params_key], name)])
        entry.argtypes, entry.restype = _entry_types(name), None
        return entry

    def launch(self, function, device_index, n, vec, args):
        blocks = ((n // vec) + src.BLOCK - 1) // src.BLOCK
        function(blocks, *args)


EMULATED_OPTIONS = [
    Cell("lif", True, 0.0, False, surrogate.ATan()),
    Cell("if", True, None, True, surrogate.Sigmoid(alpha=3.0)),
    Cell("lif", False, -0.2, False, surrogate.PiecewiseQuadratic(alpha=1.5)),
    Cell("lif", True, None, False, surrogate.SoftSign()),
    Cell("plif", True, 0.0, False, surrogate.ATan()),
    Cell("plif", False, None, True, surrogate.Sigmoid()),
    Cell("eif", True, -0.2, False, surrogate.ATan()),
    Cell("lif", True, 0.0, False, surrogate.QPseudoSpike(spiking=False)),
]


# PLIF's w in the emulated runs: sigmoid(w) = 0.6, tau = 1/0.6.
PLIF_W = math.log(1.5)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: the CPU run of the CUDA template needs a C++17 compiler")
    option_sets = [cell.params() for cell in EMULATED_OPTIONS]
    # pytest-xdist's workers each have a base temporary folder in one common folder: the build's place
    base = tmp_path_factory.getbasetemp()
    folder = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    try:
        library, entries = _emulation_library(folder, option_sets, EMULATED_CASES)
    except subprocess.CalledProcessError as error:
        pytest.fail(f"g++ failed on the generated source:\n{error.stderr[-5000:]}")
    return library, entries, option_sets


def _run(multi_step, x, v_init, p, store_v_seq, loss_kind, weights):
    """Forward, then the loss's backward; returns outputs and gradients (None where none flows); for
    PLIF, the gradient of w comes last."""
    x = x.clone().requires_grad_(loss_kind != "none")
    v = v_init.clone().requires_grad_(loss_kind != "none") if isinstance(v_init, torch.Tensor) else v_init
    w = torch.tensor(PLIF_W, requires_grad=loss_kind != "none") if p.parametric else None
    with torch.set_grad_enabled(loss_kind != "none"):
        spike, v_last, v_seq = multi_step(x, v, p, store_v_seq, w)
    outputs = [spike, v_last] + ([v_seq] if store_v_seq else [])
    if loss_kind == "none":
        return outputs, []
    w_spike, w_v, w_seq = weights
    if loss_kind == "sum":  # y.sum().backward(): the gradient arrives expanded from one element
        loss = spike.sum()
    elif loss_kind == "v_only":  # no gradient reaches the spikes
        loss = (v_last * w_v).sum() + ((v_seq * w_seq).sum() if store_v_seq else 0)
    else:
        loss = (spike * w_spike).sum() + (v_last * w_v).sum() + ((v_seq * w_seq).sum() if store_v_seq else 0)
    loss.backward()
    return outputs, [x.grad] + ([v.grad] if isinstance(v, torch.Tensor) else []) + ([w.grad] if p.parametric else [])


# Every dtype with the first option set; the others (their steps differ, the template does not) in
# float32, and PLIF (whose backward reads one more row of H and the initial state) in float16 too.
EMULATED_CASES = [(0, dtype) for dtype in src.STORAGE_TYPES] + [
    (option, torch.float32) for option in range(1, len(EMULATED_OPTIONS))] + [(4, torch.float16)]


@pytest.mark.parametrize(("option", "dtype"), EMULATED_CASES, ids=str)
@pytest.mark.parametrize("n", [8, 37])  # a multiple of every vector width, and not
def test_emulated_kernels_match_reference(emulated, option, dtype, n):
    from flashspike.backends import autograd, reference

    library, entries, option_sets = emulated
    compiled = EmulatedCompiled(library, entries, option_sets)
    p = option_sets[option]
    kernels = CupyKernels(p, compiled)
    g = torch.Generator().manual_seed(option * 100 + n)
    steps = 7  # not a multiple of the time unroll
    x = (torch.randn(steps, 3, n, generator=g) * 0.7 + 0.45).to(dtype)
    v0 = (torch.randn(3, n, generator=g) * 0.3).to(dtype)
    weights = [torch.randn(steps, 3, n, generator=g).to(dtype), torch.randn(3, n, generator=g).to(dtype),
               torch.randn(steps, 3, n, generator=g).to(dtype)]
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    for v_init, store_v_seq, loss_kind in itertools.product(
            [p.v_rest, v0, 0.3], [False, True], ["none", "weighted", "sum", "v_only"]):
        got_out, got_grad = _run(lambda *a: autograd.fused_multi_step(kernels, *a), x, v_init, p, store_v_seq,
                                 loss_kind, weights)
        # The reference in float64 from the same rounded values: only float32 arithmetic differs.
        ref_out, ref_grad = _run(reference.BACKEND.multi_step, x.double(),
                                 v_init.double() if isinstance(v_init, torch.Tensor) else v_init, p, store_v_seq,
                                 loss_kind, [w.double() for w in weights])
        case = f"v_init={'tensor' if isinstance(v_init, torch.Tensor) else v_init} store_v_seq={store_v_seq} loss={loss_kind}"
        # The backward reads H rounded to the dtype: a neuron whose H lies within that rounding of the
        # threshold may recompute another spike there, so its gradient is compared only in float32.
        keep = far_from_ties(SimpleNamespace(params=lambda: p, w=torch.tensor(PLIF_W)), x.double(),
                              v_init.double() if isinstance(v_init, torch.Tensor) else v_init,
                              0.0 if dtype == torch.float32 else 2 * tol)
        if p.parametric and got_grad:  # dL/dw: one float32 sum, over a scale of Σ|dL/dX|
            got_w, ref_w = got_grad.pop(), ref_grad.pop()
            assert torch.isfinite(got_w), case
            torch.testing.assert_close(got_w.double(), ref_w.double(), rtol=0,
                                       atol=tol * max(ref_grad[0].abs().sum().item(), 1.0), msg=lambda m: f"{case}: {m}")
        for i, (got, ref) in enumerate(zip(got_out + got_grad, ref_out + ref_grad)):
            assert got.dtype == dtype, case
            assert not torch.isnan(got).any(), f"unwritten elements: {case}"
            if i >= len(got_out):
                got, ref = got[..., keep], ref[..., keep]
            scale = max(ref.abs().max().item(), 1.0)
            torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol * scale, msg=lambda m: f"{case}: {m}")
    # Each kernel at its own width (the backward of a neuron that rebuilds V[t-1] at half of it).
    expected = {"fs_forward": src.vector_width(dtype), "fs_backward": src.backward_vector_width(dtype, p)}
    for name in compiled.launched:
        vec = int(re.search(r", (\d+), \d+>$", name).group(1))
        width = expected[name.split("<")[0]]
        assert vec == (width if n % width == 0 else 1), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("n", [8, 37])
def test_emulated_kernels_sum_the_gradient_of_a_repeated_step(emulated, dtype, n):
    """One step expanded over T: the forward reads it in place (x_step 0) and the backward writes its
    gradient summed over T (SUM_GRAD_X), against the reference through autograd's own expand."""
    from flashspike.backends import autograd, reference

    library, entries, option_sets = emulated
    compiled = EmulatedCompiled(library, entries, option_sets)
    p = option_sets[0]
    kernels = CupyKernels(p, compiled)
    g = torch.Generator().manual_seed(n)
    step = (torch.randn(3, n, generator=g) * 0.7 + 0.45).to(dtype)
    weights = torch.randn(7, 3, n, generator=g).to(dtype)
    results = []
    for multi_step, values, w in ((lambda *a: autograd.fused_multi_step(kernels, *a), step, weights),
                                  (reference.BACKEND.multi_step, step.double(), weights.double())):
        leaf = values.clone().requires_grad_()
        spike, v_last, _ = multi_step(leaf.unsqueeze(0).expand(7, 3, n), p.v_rest, p, False)
        ((spike * w).sum() + v_last.sum()).backward()
        results.append((spike, leaf.grad))
    (spike, grad), (ref_spike, ref_grad) = results
    sums = [name for name in compiled.launched if name.startswith("fs_backward")]
    assert len(sums) == 1 and sums[0][sums[0].index("<") + 1:-1].split(", ")[5] == "true", sums  # SUM_GRAD_X
    tol = {torch.float32: 1e-5, torch.float16: 4e-3}[dtype]
    torch.testing.assert_close(spike.double(), ref_spike)
    keep = far_from_ties(SimpleNamespace(params=lambda: p), step.double().expand(7, 3, n), p.v_rest,
                          0.0 if dtype == torch.float32 else 2 * tol)
    scale = max(ref_grad.abs().max().item(), 1.0)
    torch.testing.assert_close(grad.double()[keep], ref_grad[keep], rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("dtype", list(src.STORAGE_TYPES), ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("side", [4, 3])  # planes of 16 and of 9 elements: a thread's VEC cross planes
def test_emulated_forward_computes_h_again_from_a_normalized_input(emulated, dtype, channels_last, side):
    """NORMALIZE: H from a BatchNorm's input, normalized as it is loaded (one fused multiply-add
    rounded to the dtype), equals H of the normalized input as PyTorch rounds it."""
    library, entries, option_sets = emulated
    compiled = EmulatedCompiled(library, entries, option_sets)
    p = option_sets[0]
    kernels = CupyKernels(p, compiled)
    g = torch.Generator().manual_seed(9)
    flat = (torch.randn(7 * 8, 3, side, side, generator=g) * 2).to(dtype)
    if channels_last:
        flat = flat.contiguous(memory_format=torch.channels_last)
    scale, shift = torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g) * 0.5 + 0.4
    x = flat.view(7, 8, 3, side, side)
    # laid out as x is (the BatchNorm's output takes its input's strides)
    y = torch.empty_like(x).copy_((x.double() * scale.double().view(3, 1, 1) + shift.double().view(3, 1, 1)).float())
    assert y.stride() == x.stride()
    v_init = (torch.rand(8, 3, side, side, generator=g) * 0.5).to(dtype)
    v_init = v_init.contiguous(memory_format=torch.channels_last) if channels_last else v_init
    for start in (None, v_init):
        _, _, h = kernels.forward(y, start, p, True, False)
        again = kernels.recompute_h(x, scale, shift, x.stride(2), 3, start, p)
        assert torch.equal(again, h)
        assert not torch.equal(h, kernels.forward(x, start, p, True, False)[2])
    normalizing = [name for name in compiled.launched if name.startswith("fs_forward") and ", true, " in name
                   and name.split(", ")[4] == "true"]
    assert len(normalizing) == 2, compiled.launched
    assert all(name.endswith(f", {src.vector_width(dtype)}, {src.UNROLL[('forward', y.element_size())]}>")
               for name in normalizing), normalizing  # vectorized: every thread's VEC in one go


@pytest.mark.parametrize("dtype", list(src.STORAGE_TYPES), ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_emulated_forward_fires_from_a_normalized_input(emulated, dtype, channels_last):
    """NORMALIZE without SAVE_H: spikes, V (every step's, or the last) and the spikes' bits from a
    BatchNorm's input, normalized as it is loaded, equal those of its normalized output; no H."""
    from flashspike.backends.packed_bits import kept_bits

    library, entries, option_sets = emulated
    compiled = EmulatedCompiled(library, entries, option_sets)
    p = option_sets[0]
    kernels = CupyKernels(p, compiled)
    g = torch.Generator().manual_seed(13)
    flat = (torch.randn(5 * 8, 4, 4, 4, generator=g) * 2).to(dtype)
    if channels_last:
        flat = flat.contiguous(memory_format=torch.channels_last)
    scale, shift = torch.rand(4, generator=g) + 0.5, torch.randn(4, generator=g) * 0.5 + 0.4
    x = flat.view(5, 8, 4, 4, 4)
    y = torch.empty_like(x).copy_((x.double() * scale.double().view(4, 1, 1) + shift.double().view(4, 1, 1)).float())
    v_init = (torch.rand(8, 4, 4, 4, generator=g) * 0.5).to(dtype)
    v_init = v_init.contiguous(memory_format=torch.channels_last) if channels_last else v_init
    for start, store_v_seq, bits in itertools.product((None, v_init), (False, True), (False, True)):
        want = kernels.forward(y, start, p, False, store_v_seq, None, bits)
        got = kernels.forward(x, start, p, False, store_v_seq, None, bits, (scale, shift, x.stride(2), 4))
        assert got[2] is None and 0 < want[0].sum() < want[0].numel()
        for a, b in zip(got[:2], want[:2]):
            assert a.stride() == b.stride() and torch.equal(a, b)
        if bits:
            kept, expected = kept_bits(got[0], 1), kept_bits(want[0], 1)
            assert (kept is None) == (expected is None) == (dtype == torch.float32)
            assert kept is None or torch.equal(kept, expected)
    # one step repeated over T (the Fashion-MNIST net's stem): X read from the same block at every step
    step_x, step_y = x[0], y[0]
    repeated = [t.expand(5, *t.shape) for t in (step_x, step_y)]
    want = kernels.forward(repeated[1], v_init, p, False, False)
    got = kernels.forward(repeated[0], v_init, p, False, False, None, False, (scale, shift, step_x.stride(1), 4))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and 0 < want[0].sum()
    firing = [name for name in compiled.launched if name.startswith("fs_forward") and name.split(", ")[4] == "true"]
    assert len(firing) == 9 and all(name.split(", ")[2] == "false" for name in firing), compiled.launched


@pytest.mark.parametrize(("option", "dtype"), [(0, torch.float32), (0, torch.float16), (0, torch.bfloat16),
                                               (4, torch.float16), (6, torch.float32)], ids=str)
def test_emulated_backward_computes_h_first_from_a_normalized_input(emulated, monkeypatch, option, dtype):
    """NORMALIZE in the backward (H from the BatchNorm's input written into dL/dX's memory, then the walk
    back) equals H computed by the forward kernel and the ordinary backward, bit for bit, for every
    switch (LIF, PLIF with its dL/dw, EIF rebuilding V[t-1])."""
    from flashspike.backends import layouts

    monkeypatch.setattr(layouts, "POISON_OUTPUTS", True)
    library, entries, option_sets = emulated
    compiled = EmulatedCompiled(library, entries, option_sets)
    p = option_sets[option]
    kernels = CupyKernels(p, compiled)
    g = torch.Generator().manual_seed(10 + option)
    flat = (torch.randn(5 * 8, 3, 3, 3, generator=g) * 2).to(dtype).contiguous(memory_format=torch.channels_last)
    x = flat.view(5, 8, 3, 3, 3)
    scale, shift = torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g) * 0.5 + 0.4
    decay = torch.full((1,), 0.6) if p.parametric else None
    v_init = (torch.rand(8, 3, 3, 3, generator=g) * 0.4).to(dtype).contiguous(memory_format=torch.channels_last)
    grad_spike = torch.randn(x.shape, generator=g).to(dtype)
    for start, store_v_seq, scalar, need_grad_v_init in itertools.product(
            (None, v_init), (False, True), (False, True), (False, True)):
        spike_grad = grad_spike.new_ones(()).expand(x.shape) if scalar else grad_spike
        v_grad = torch.randn(x.shape if store_v_seq else x.shape[1:], generator=g).to(dtype)
        arguments = (x, scale, shift, x.stride(2), 3, start, spike_grad, v_grad, p, store_v_seq, need_grad_v_init,
                     decay)
        fused = kernels.backward_normalized(*arguments)
        kernels.fuses_normalized_backward = False
        apart = kernels.backward_normalized(*arguments)
        del kernels.fuses_normalized_backward
        case = f"v_init={start is not None} store_v_seq={store_v_seq} scalar={scalar} grad_v_init={need_grad_v_init}"
        for got, want in zip(fused, apart):
            assert (got is None) == (want is None), case
            if got is not None:
                assert not torch.isnan(got).any(), case
                assert torch.equal(got, want), case
    assert any(name.startswith("fs_backward") and name.split(", ")[6] == "true" for name in compiled.launched)


@pytest.mark.parametrize("dtype", list(src.STORAGE_TYPES), ids=str)
def test_emulated_forward_writes_the_addend_plus_the_spikes(emulated, monkeypatch, dtype):
    """ADDEND: A[t] + S[t] in place of S[t], one rounding (torch's add), for every switch that fires: an
    initial state, H kept or not, the V sequence, a normalized input, and one neuron at a time (N odd)."""
    from flashspike.backends import layouts

    monkeypatch.setattr(layouts, "POISON_OUTPUTS", True)
    library, entries, option_sets = emulated
    compiled = EmulatedCompiled(library, entries, option_sets)
    p = option_sets[0]
    kernels = CupyKernels(p, compiled)
    g = torch.Generator().manual_seed(31)
    for n in (16, 15):
        x = (torch.rand(4, n, generator=g) * 3).to(dtype)
        addend = torch.randint(0, 4, (4, n), generator=g).to(dtype)
        v_init = (torch.rand(n, generator=g) * 0.5).to(dtype)
        scale, shift = torch.rand(1, generator=g) + 0.5, torch.rand(1, generator=g)
        for start, save_h, store_v_seq, normalize in itertools.product(
                (None, v_init), (False, True), (False, True), (None, (scale, shift, 1, 1))):
            if normalize is not None and save_h:
                continue  # (a normalizing launch with H computes H again: it fires nothing)
            spike, v_out, h = kernels.forward(x, start, p, save_h, store_v_seq, normalize=normalize)
            added = kernels.forward(x, start, p, save_h, store_v_seq, normalize=normalize, addend=addend)
            assert torch.equal(added[0], addend + spike) and 0 < spike.sum() < spike.numel()
            for a, b in zip(added[1:], (v_out, h)):
                assert (a is None and b is None) or torch.equal(a, b)
    adding = [name for name in compiled.launched if name.startswith("fs_forward") and name.split(", ")[6] == "true"]
    assert len(adding) == 2 * 12 and {name.split(", ")[7] for name in adding} == {"1", str(src.vector_width(dtype))}


@pytest.mark.parametrize("dtype", list(src.STORAGE_TYPES), ids=str)
def test_emulated_forward_writes_the_spike_bits_of_16_bit_neurons(emulated, dtype):
    """SPIKE_BITS: a thread's eight 16-bit neurons in one byte of every step, as the layers' packing lays
    them out; float32 (four neurons a thread) leaves it to them."""
    from flashspike.backends.packed_bits import kept_bits
    from flashspike.memory import spike_bits

    library, entries, option_sets = emulated
    compiled = EmulatedCompiled(library, entries, option_sets)
    p = option_sets[0]
    kernels = CupyKernels(p, compiled)
    x = (torch.rand(7, 3, 16, generator=torch.Generator().manual_seed(12)) * 2).to(dtype)
    spike, _, _ = kernels.forward(x, None, p, True, False, None, True)
    assert torch.equal(spike, kernels.forward(x, None, p, True, False)[0])
    writing = [name for name in compiled.launched if name.split(", ")[5] == "true"]
    bits = kept_bits(spike, 1)
    if dtype == torch.float32:
        assert bits is None and not writing
        return
    assert len(writing) == 1 and 0 < spike.sum() < spike.numel()
    assert torch.equal(bits, spike_bits.pack(spike, [0, 1, 2], 1))
