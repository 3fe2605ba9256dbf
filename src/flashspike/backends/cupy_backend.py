"""Backend 'cupy': the fused kernels of :mod:`flashspike.backends.cuda_source`, compiled by NVRTC
through CuPy and launched on PyTorch's tensors in place.

The host path of one call is kept to dictionary look-ups and one launch: tensors go to the kernel as
raw pointers (``data_ptr()``, no copy, no CuPy array), on the input's device and on PyTorch's current
stream there (so CUDA graph capture and side streams work), outputs come ready from torch's allocator
(:mod:`.layouts`), and nothing waits for the GPU. A kernel set is made per option set with its key and
source (the plan of :mod:`.choice` holds it), so a launch asks nothing of the options; compiled kernels
are cached in memory by ``(params.key, dtype, switches, device, kernel)`` and on disk by CuPy
(``~/.cupy/kernel_cache``).
"""

from __future__ import annotations

import warnings

import torch

from . import autograd, layouts
from . import cuda_source as src
from .kernel_set import BackendError, KernelSet

__all__ = ["BACKEND", "CupyBackend", "CupyKernels", "CompiledKernels", "PIP_HINT"]

PIP_HINT = (
    "install the CuPy wheel for your CUDA major version, matching torch.version.cuda: "
    "pip install cupy-cuda12x (CUDA 12) or pip install cupy-cuda13x (CUDA 13)"
)

# NVRTC options: C++14 is what CuPy assumes; no fast-math, so exp and division stay IEEE-accurate as
# in the reference. (CuPy's compile adds -ftz=true: float32 denormals flush to zero, far below the
# tolerances of the parity tests.)
_NVRTC_OPTIONS = ("-std=c++14",)


def _raw_stream_getter():
    """A function device_index -> PyTorch's current cudaStream_t there, as an int.

    PyTorch's own compiled code (Inductor, Triton launchers) reads the raw stream through
    ``torch._C._cuda_getCurrentRawStream``: one C call instead of building a ``torch.cuda.Stream``
    object per launch. The public spelling is the fallback where that name is missing.
    """
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is not None:
        return raw
    return lambda index: torch.cuda.current_stream(index).cuda_stream


class _CupyState:
    """CuPy, imported and checked once; the error is kept and raised again on every later call."""

    def __init__(self):
        self.cupy = None
        self.error: BaseException | None = None

    def load(self):
        if self.cupy is not None:
            return self.cupy
        if self.error is None:
            try:
                import cupy

                # Importing CuPy succeeds without its CUDA libraries; these calls load them, so a
                # broken install fails here, at the check, rather than at the first launch.
                cupy.cuda.runtime.runtimeGetVersion()
                cupy.cuda.nvrtc.getVersion()
                self.cupy = cupy
                return cupy
            except Exception as error:  # any failure to import or to load CUDA libraries
                self.error = error
        raise ImportError(
            f"backend 'cupy' needs a working CuPy: {PIP_HINT}. The attempt failed with "
            f"{type(self.error).__name__}: {self.error}"
        ) from self.error


_CUPY = _CupyState()


def _ptr(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.data_ptr()


def _vector_width(dtype: torch.dtype, n: int, *pointers: int, vec: int | None = None) -> int:
    """VEC for a launch: ``vec`` elements at a time (by default 16 bytes' worth) when N is a multiple of it
    and every pointer is 16-byte aligned (a view with an offset may not be), else one at a time."""
    vec = src.vector_width(dtype) if vec is None else vec
    if n % vec:
        return 1
    for pointer in pointers:
        if pointer % 16:
            return 1
    return vec


class CompiledKernels:
    """What CuPy has compiled and loaded in this process, for every option set: functions by (options key,
    dtype, switches, device), and the streams that launches go to."""

    def __init__(self):
        self.functions: dict = {}  # (params.key, dtype, switches, device, name_of) -> cupy Function
        self._streams: dict = {}  # (raw cudaStream_t, device) -> cupy ExternalStream (what a launch takes)
        self._current_raw_stream = _raw_stream_getter()

    def function(self, params_key: tuple, source: str, dtype, switches: tuple, device_index: int, name_of):
        """The function ``name_of(dtype, *switches)`` of ``source`` (the kernels of the options whose key is
        ``params_key``) for that device: compiled, or read from CuPy's disk cache, on first use."""
        # (name_of too: a forward's switches may equal a backward's, True == 1 == GRAD_DENSE included)
        key = (params_key, dtype, switches, device_index, name_of)
        function = self.functions.get(key)
        if function is None:
            function = self.functions[key] = _compile(source, name_of(dtype, *switches), device_index)
        return function

    def compiled_count(self) -> int:
        """How many kernels this process has compiled or loaded (for tests of the cache)."""
        return len(self.functions)

    def launch(self, function, device_index: int, n: int, vec: int, args: tuple) -> None:
        cupy = _CUPY.cupy
        key = (self._current_raw_stream(device_index), device_index)  # handle 0 exists on every device
        stream = self._streams.get(key)
        if stream is None:
            with warnings.catch_warnings():
                # CuPy 14 deprecates ExternalStream for Stream.from_external, which wants an object
                # speaking the CUDA stream protocol; a raw handle is what torch gives without allocation.
                warnings.simplefilter("ignore", DeprecationWarning)
                stream = self._streams[key] = cupy.cuda.ExternalStream(*key)
        blocks = ((n // vec) + src.BLOCK - 1) // src.BLOCK
        if cupy.cuda.runtime.getDevice() == device_index:
            function((blocks,), (src.BLOCK,), args, shared_mem=0, stream=stream)
        else:  # the kernel was loaded for that device: make it current for the launch
            with cupy.cuda.Device(device_index):
                function((blocks,), (src.BLOCK,), args, shared_mem=0, stream=stream)


def _compile(source: str, name: str, device_index: int):
    cupy = _CUPY.load()
    module = cupy.RawModule(code=source, options=_NVRTC_OPTIONS, name_expressions=(name,))
    with cupy.cuda.Device(device_index):
        return module.get_function(name).kernel  # compiles (or reads the disk cache) and loads


class CupyKernels(KernelSet):
    """The launchers of the kernel set (:mod:`.kernel_set`) of one option set, for CUDA tensors, through
    CuPy: made with the options' key and CUDA source, which is all a launch needs to find its function
    in ``compiled`` (the process's :class:`CompiledKernels`)."""

    def __init__(self, p, compiled: CompiledKernels):
        self.params_key = p.key
        self.source = src.module_source(p)
        self.compiled = compiled

    def writes_spike_bits(self, dtype) -> bool:
        # a thread's VEC = 8 neurons fill one byte: 16-bit elements, 8 to a 16-byte access
        return src.vector_width(dtype) == src.SPIKE_BITS_VEC

    def launch_forward(self, x, v_init, spike, v_out, h, decay, p, normalize=None, spike_bits=None,
                       addend=None) -> bool:
        steps = x.shape[0]
        n = x.numel() // steps
        # (H computed again: no spike or V is written, their pointers are null)
        pointers = (x.data_ptr(), _ptr(v_init), _ptr(spike), _ptr(v_out), _ptr(h), _ptr(addend))
        store_v_seq = v_out is not None and v_out.dim() == x.dim()
        if normalize is None:
            channels = (0, 0, 1, 1)
        else:
            scale, shift, channel_stride, count = normalize
            channels = (scale.data_ptr(), shift.data_ptr(), channel_stride, count)
        vec = _vector_width(x.dtype, n, *(pointer for pointer in pointers if pointer))
        if vec != src.SPIKE_BITS_VEC:  # (an operand off a 16-byte boundary: the spikes are not packed here)
            spike_bits = None
        device_index = x.get_device()  # an int without building a torch.device
        switches = (v_init is not None, h is not None, store_v_seq, normalize is not None, spike_bits is not None,
                    addend is not None, vec)
        compiled = self.compiled
        function = compiled.function(self.params_key, self.source, x.dtype, switches, device_index, src.forward_name)
        compiled.launch(function, device_index, n, vec, (*pointers[:5], _ptr(decay), *channels[:2], _ptr(spike_bits),
                                                         pointers[5], steps, n, x.stride(0), *channels[2:]))
        return spike_bits is not None

    fuses_normalized_backward = True

    def launch_backward(self, h, gs_mode, grad_spike, gv_mode, grad_v_out, grad_x, grad_v_init, v_init, decay, p,
                        store_v_seq: bool, normalize=None):
        like = grad_x if h is None else h  # (with normalize, H is written into grad_x)
        steps = like.shape[0]
        n = like.numel() // steps
        pointers = (_ptr(h), _ptr(grad_spike), _ptr(grad_v_out), grad_x.data_ptr(), _ptr(grad_v_init))
        # A SCALAR gradient is read as one element, so its alignment does not matter.
        dense = [pointers[3], pointers[4]] + ([pointers[0]] if h is not None else [])
        if gs_mode == src.GRAD_DENSE:
            dense.append(pointers[1])
        if gv_mode == src.GRAD_DENSE:
            dense.append(pointers[2])
        if v_init is not None:
            dense.append(v_init.data_ptr())
        if normalize is None:
            normalizing = (0, 0, 0, 1, 1, 1)
        else:
            x, scale, shift, channel_stride, channels = normalize
            normalizing = (x.data_ptr(), scale.data_ptr(), shift.data_ptr(), x.stride(0), channel_stride, channels)
            dense.append(x.data_ptr())
        vec = _vector_width(like.dtype, n, *dense, vec=src.backward_vector_width(like.dtype, p))
        # PLIF's ∂L/∂w: one partial sum per thread of this launch, whose count only the launch knows.
        partials = layouts.grad_w_partials(n // vec, like) if p.parametric else None
        device_index = like.get_device()
        switches = (gs_mode, gv_mode, store_v_seq, grad_v_init is not None, grad_x.dim() < like.dim(),
                    normalize is not None, vec)
        compiled = self.compiled
        function = compiled.function(self.params_key, self.source, like.dtype, switches, device_index,
                                     src.backward_name)
        extra = (_ptr(v_init), _ptr(decay), _ptr(partials), *normalizing[:3])
        compiled.launch(function, device_index, n, vec, (*pointers, *extra, steps, n, *normalizing[3:]))
        return None if partials is None else layouts.sum_grad_w(partials)


class CupyBackend(autograd.KernelBackend):
    name = "cupy"

    def __init__(self):
        super().__init__()
        self.compiled = CompiledKernels()  # shared by the kernel sets of every option set
        self._kernel_sets: dict = {}  # params.key -> CupyKernels

    def check_input(self, x_seq: torch.Tensor) -> None:
        if x_seq.device.type != "cuda":
            raise BackendError(
                f"backend 'cupy' runs on CUDA tensors, but x_seq is on {x_seq.device}; "
                "use backend='torch' (any device) or backend='auto' (picks what runs there)"
            )
        _CUPY.load()

    def kernel_set(self, p):
        """The kernel set of ``p``'s options (one per ``p.key``, whatever object holds them)."""
        key = p.key
        kernels = self._kernel_sets.get(key)
        if kernels is None:
            kernels = self._kernel_sets[key] = CupyKernels(p, self.compiled)
        return kernels


BACKEND = CupyBackend()
