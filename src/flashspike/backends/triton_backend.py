"""Backend 'triton': the fused forward and backward kernels of :mod:`.triton_source`, run by Triton.

On CUDA tensors the kernels are compiled for the GPU. On CPU tensors they run only through Triton's
interpreter, switched on by ``TRITON_INTERPRET=1`` in the environment before triton is imported; that
is how CI runs the parity tests without a GPU, and it is slow, so it is not offered otherwise.

The generated source of a layer's kernels is turned into ``triton.jit`` functions once per
(``NeuronParams.key``, interpreter on or off) and kept in a dictionary; Triton itself then compiles
and caches one binary per dtype and per combination of the ``tl.constexpr`` flags of a call.
"""

from __future__ import annotations

import contextlib
import hashlib
import linecache
import os
import sys

import torch

from ..optional_triton import import_triton
from . import autograd, layouts
from .kernel_set import BackendError, KernelSet
from .triton_source import BACKWARD_NAME, FORWARD_NAME, backward_source, forward_source

# Neurons and warps per program on a GPU: four neurons per thread was the fastest on an H200
# (`python -m flashspike.benchmarks.neuron --backends triton --t 128`), for float32 and float16 alike.
# The interpreter: _interpreter_block.
GPU_BLOCK = 512
GPU_NUM_WARPS = 4
# The interpreter pays per program and per operation, not per element: few, wide programs.
INTERPRETER_MAX_BLOCK = 8192

def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (TRITON_INTERPRET)."""
    knobs = getattr(sys.modules.get("triton"), "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def _jit(source: str, name: str):
    """``triton.jit`` of the function ``name`` defined by generated ``source``.

    Triton reads a kernel's text back with ``inspect.getsource``; registering the text in
    ``linecache`` under a name unique to it is what lets that work for code that has no file.
    """
    triton = import_triton()
    filename = f"<flashspike-triton {name} {hashlib.sha1(source.encode()).hexdigest()[:16]}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    scope = {"__name__": __name__, "tl": triton.language}
    exec(compile(source, filename, "exec"), scope)
    # T changes from call to call; specializing on it (T == 1, T % 16) would only multiply compiles.
    return triton.jit(scope[name], do_not_specialize=["T"])


def _interpreter_block(n: int) -> int:
    return min(1 << max(n - 1, 0).bit_length(), INTERPRETER_MAX_BLOCK)


class TritonKernels(KernelSet):
    """The launchers of the kernel set (see :mod:`.kernel_set`) of one layer's options."""

    def __init__(self, p, interpret: bool):
        self.forward_kernel = _jit(forward_source(p), FORWARD_NAME)
        self.backward_kernel = _jit(backward_source(p), BACKWARD_NAME)
        self.interpret = interpret

    def _launch_shape(self, n: int):
        """(grid, BLOCK, launch options) for N neurons."""
        if self.interpret:
            block = _interpreter_block(n)
            return ((n + block - 1) // block,), block, {}
        block = GPU_BLOCK
        return ((n + block - 1) // block,), block, {"num_warps": GPU_NUM_WARPS}

    def writes_spike_bits(self, dtype) -> bool:
        # any dtype: a program's BLOCK neurons (a power of two, at least a step's 8) fill whole bytes
        return True

    def launch_forward(self, x, v_init, spike, v_out, h, decay, p, normalize=None, spike_bits=None,
                       addend=None) -> bool:
        steps = x.shape[0]
        n = x.numel() // steps
        grid, block, options = self._launch_shape(n)
        if normalize is None:
            scale = shift = None
            channel_stride = channels = 1
        else:
            scale, shift, channel_stride, channels = normalize
        h_only = normalize is not None and h is not None  # H computed again: no spike or V is written
        if h_only:
            spike = v_out = h  # (pointers the kernel never writes through)
        store_v_seq = not h_only and v_out.dim() == x.dim()
        with _on_device(x):
            self.forward_kernel[grid](
                x, v_init, spike, v_out, h, decay, scale, shift, spike_bits, addend, steps, n, x.stride(0),
                channel_stride, channels, block, v_init is not None, h is not None, store_v_seq, normalize is not None,
                spike_bits is not None, addend is not None,
                **options,
            )  # fmt: skip
        return spike_bits is not None

    fuses_normalized_backward = True

    def launch_backward(self, h, gs_mode, grad_spike, gv_mode, grad_v_out, grad_x, grad_v_init, v_init, decay, p,
                        store_v_seq, normalize=None):
        like = grad_x if h is None else h  # (with normalize, H is written into grad_x)
        steps = like.shape[0]
        n = like.numel() // steps
        grid, block, options = self._launch_shape(n)
        # PLIF's ∂L/∂w: one partial sum per program of this launch, whose count only the launch knows.
        partials = layouts.grad_w_partials(grid[0], like) if p.parametric else None
        if normalize is None:
            x = scale = shift = None
            x_step = channel_stride = channels = 1
        else:
            x, scale, shift, channel_stride, channels = normalize
            x_step = x.stride(0)
        with _on_device(like):
            self.backward_kernel[grid](
                h, grad_spike, grad_v_out, grad_x, grad_v_init, v_init, decay, partials, x, scale, shift, steps, n,
                (steps - 1) * n, x_step, channel_stride, channels,
                block, gs_mode, gv_mode, store_v_seq, grad_v_init is not None, grad_x.dim() < like.dim(),
                v_init is not None, normalize is not None,
                **options,
            )  # fmt: skip
        return None if partials is None else layouts.sum_grad_w(partials)


_NO_SWITCH = contextlib.nullcontext()


def _on_device(tensor):
    """Triton launches on the current CUDA device: switch to the tensor's when it is another."""
    if tensor.device.type == "cuda" and tensor.device.index != torch.cuda.current_device():
        return torch.cuda.device(tensor.device)
    return _NO_SWITCH


_kernel_sets: dict = {}


def kernel_set(p) -> TritonKernels:
    """The cached kernel set for ``p``'s options (and the interpreter's state)."""
    key = (p.key, interpreting())
    kernels = _kernel_sets.get(key)
    if kernels is None:
        kernels = _kernel_sets[key] = TritonKernels(p, key[1])
    return kernels


class TritonBackend(autograd.KernelBackend):
    name = "triton"

    def check_input(self, x_seq: torch.Tensor) -> None:
        device = x_seq.device.type
        if device == "cpu" and not interpreting():
            raise BackendError(
                "backend 'triton' runs on CUDA tensors, and this input is on the CPU; use backend='torch' "
                "or 'auto' there (or set TRITON_INTERPRET=1 before importing triton to run Triton's slow "
                "CPU interpreter, as the tests do)"
            )
        if device not in ("cuda", "cpu"):
            raise BackendError(
                f"backend 'triton' runs on CUDA tensors, and this input is on {x_seq.device}; "
                "use backend='torch' or 'auto' there"
            )
        import_triton()

    def kernel_set(self, p):
        return kernel_set(p)


BACKEND = TritonBackend()
