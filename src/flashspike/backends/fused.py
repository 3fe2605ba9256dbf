"""What every fused-kernel backend shares: the autograd Function and the input rules.

A kernel backend supplies a *kernel set* with two launchers. They see a sequence ``x`` of shape
``[T, *]`` only as memory: T blocks of ``N = x.numel() // T`` elements, one block per step, each block
dense (:func:`sequence_layout`), in any order of the step's dimensions, and step t's block
``x.stride(0) * t`` elements after the first. A contiguous tensor is one such layout; so is a
channels_last activation ``[T, B, C, H, W]`` (strides ``(B·H·W·C, H·W·C, 1, W·C, C)``), and so is one
step repeated over T by ``expand`` (first stride 0: a static input is read in place, never copied T
times). Element ``i`` of every block is the same neuron. Outputs are always T separate blocks.

``forward(x, v_init, p, save_h, store_v_seq, decay=None) -> (spike, v_out, h)``
    ``decay`` is PLIF's k = sigmoid(w), a one-element float32 tensor on x's device that the kernel
    reads at run time (so a captured CUDA graph replays with the current value); None otherwise.
    ``v_init`` is a step-shaped tensor of x's dtype laid out like one block of ``x`` (x's strides
    without the first), or None for "every neuron at ``p.v_rest``". ``spike`` has x's shape and
    strides; ``v_out`` is V for all steps (like ``x``) when ``store_v_seq``, else the last V (like
    ``v_init``); ``h`` (H, the pre-reset potential, what backward needs) is like ``x`` when
    ``save_h``, else None. All outputs have x's dtype.

``backward(h, grad_spike, grad_v_out, p, store_v_seq, need_grad_v_init, sum_grad_x=False, v_init=None, decay=None) -> (grad_x, grad_v_init, grad_w)``
    ``grad_spike`` and ``grad_v_out`` are shaped like ``spike`` and ``v_out``, or None where no
    gradient flows (treat as zero: nothing is materialized). They may have any strides; launchers pass
    them through :func:`grad_operand`, which keeps the expanded scalar of ``y.sum().backward()`` as one
    element and brings anything else into h's layout. ``grad_x`` is like ``h``, or, with
    ``sum_grad_x`` (the input was one step repeated over T), its sum over T, like one block of ``h``;
    ``grad_v_init`` is like one block of ``h``, or None when not asked for. ``v_init`` and ``decay``
    are what the forward received: EIF and PLIF rebuild V[t−1] from H[t−1] and, at t = 0, from
    ``v_init`` (see :mod:`.step_code`). ``grad_w`` is PLIF's ∂L/∂w, a float32 0-d tensor reduced on
    the device (float64 for float64 sequences), else None.

Launchers allocate their outputs with :func:`forward_outputs` / :func:`backward_outputs`: torch's
allocator (so CUDA graph capture works), which the tests switch to NaN-filled tensors so that an
element a kernel forgets to write fails.

This module turns the launchers into a differentiable ``multi_step`` with the same contract as the
reference backend.
"""

from __future__ import annotations

import warnings

import torch

from ..params import NeuronParams
from ..surrogate import SurrogateFunction
from . import reference
from .step_code import GRAD_ABSENT, GRAD_DENSE, GRAD_SCALAR


# Tests set this to True: outputs then start as NaN instead of whatever memory held.
POISON_OUTPUTS = False


def _poisoned(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.fill_(float("nan")) if POISON_OUTPUTS else tensor


def new_output(shape, like: torch.Tensor) -> torch.Tensor:
    """An uninitialized contiguous kernel output of ``like``'s dtype and device."""
    return _poisoned(torch.empty(shape, dtype=like.dtype, device=like.device))


def output_like(like: torch.Tensor) -> torch.Tensor:
    """An uninitialized sequence output shaped like ``like`` (in sequence layout), with its steps laid
    out like ``like``'s and stored one after another."""
    if like.stride(0) == 0 and like.shape[0] > 1:  # one step repeated: give each step its own block
        strides = (like.numel() // like.shape[0], *like.stride()[1:])
        return _poisoned(torch.empty_strided(like.shape, strides, dtype=like.dtype, device=like.device))
    # empty_like keeps the strides of a dense, non-overlapping tensor, which every other sequence is.
    return _poisoned(torch.empty_like(like))


def step_output(like: torch.Tensor) -> torch.Tensor:
    """An uninitialized ``[*]`` output laid out like one step of ``like`` ``[T, *]``."""
    return _poisoned(torch.empty_strided(like.shape[1:], like.stride()[1:], dtype=like.dtype, device=like.device))


def forward_outputs(x: torch.Tensor, save_h: bool, store_v_seq: bool):
    """The forward launcher's outputs for ``x``, as the contract lays them out: (spike, v_out, h)."""
    v_out = output_like(x) if store_v_seq else step_output(x)
    return output_like(x), v_out, (output_like(x) if save_h else None)


def backward_outputs(h: torch.Tensor, need_grad_v_init: bool, sum_grad_x: bool = False):
    """The backward launcher's outputs for ``h``: (grad_x, grad_v_init or None)."""
    grad_x = step_output(h) if sum_grad_x else output_like(h)
    return grad_x, (step_output(h) if need_grad_v_init else None)


def grad_w_partials(count: int, like: torch.Tensor) -> torch.Tensor:
    """``count`` float32 slots on ``like``'s device, one per program (Triton) or thread (CUDA) of a
    backward launch, for its share of PLIF's ∂L/∂w; torch sums them (see :func:`sum_grad_w`)."""
    return _poisoned(torch.empty(count, dtype=torch.float32, device=like.device))


def sum_grad_w(partials: torch.Tensor) -> torch.Tensor:
    """∂L/∂w, a float32 0-d tensor, from a backward launch's partial sums."""
    return partials.sum()


def grad_operand(grad: torch.Tensor | None, h: torch.Tensor, whole: bool):
    """(GRAD_* mode, tensor to pass) for an output gradient: shaped like ``h`` (``whole``) or like one
    step of it. Laid out like that, or an expanded scalar (read as its one element), it passes as it
    is; anything else is copied into that layout."""
    if grad is None:
        return GRAD_ABSENT, None
    if grad.dtype != h.dtype:
        grad = grad.to(h.dtype)
    strides = grad.stride()
    if not any(strides):
        return GRAD_SCALAR, grad
    if strides != (h.stride() if whole else h.stride()[1:]):
        grad = (output_like(h) if whole else step_output(h)).copy_(grad)
    return GRAD_DENSE, grad


def sequence_layout(x_seq: torch.Tensor) -> torch.Tensor:
    """``x_seq`` itself when the kernels can read it in place (see the module docstring): its steps
    are dense blocks, one after another or all the same block; else a contiguous copy."""
    if x_seq.is_contiguous() or _readable_in_place(x_seq):
        return x_seq
    return x_seq.contiguous()


def _readable_in_place(x: torch.Tensor) -> bool:
    shape, strides = x.shape, x.stride()
    if shape[0] > 1 and strides[0] not in (0, x.numel() // shape[0]):
        return False
    # A step is dense when its dimensions, from the smallest stride up, each step over all before it.
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(strides[1:], shape[1:]) if sz > 1):
        if stride != expected:
            return False
        expected *= size
    return True


def repeated_step(x: torch.Tensor) -> torch.Tensor | None:
    """The step ``s`` when ``x`` is ``s.expand(T, *s.shape)`` (or ``s.unsqueeze(0).expand(...)``) made
    under autograd from a tensor that requires grad, else None.

    Autograd would hand such an ``x`` a ``[T, *]`` gradient and then sum it over T; giving ``s`` to the
    Function instead lets the kernel add the T gradients in registers and write one step. (A hook
    registered on ``x`` itself is then not called: the gradient goes to ``s`` directly.)
    """
    if x.stride(0) != 0 or x.shape[0] == 1 or x.grad_fn is None:
        return None
    step = x._base  # the tensor x is a view of
    if (step is None or not step.requires_grad or step.shape != x.shape[1:] or step.stride() != x.stride()[1:]
            or step.storage_offset() != x.storage_offset()):
        return None
    return step


def initial_state(v_init, x: torch.Tensor, p: NeuronParams):
    """``v_init`` as the launchers take it for ``x`` (in sequence layout): None for "at rest", else a
    tensor laid out like one step of ``x`` (copied into that layout when it is not)."""
    if isinstance(v_init, torch.Tensor):
        if v_init.stride() == x.stride()[1:]:
            return v_init
        return torch.empty_strided(x.shape[1:], x.stride()[1:], dtype=x.dtype, device=x.device).copy_(v_init)
    if v_init == p.v_rest:
        return None
    return torch.empty_strided(x.shape[1:], x.stride()[1:], dtype=x.dtype, device=x.device).fill_(v_init)


def refuse_create_graph() -> None:
    """A backward kernel's gradient is not itself differentiable: refuse to build a graph of it
    (grad mode is on in a backward pass only under ``create_graph=True``) rather than drop the
    second-order terms silently."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "the fused kernel backends ('cupy', 'triton') compute the neuron's gradient in one kernel, which "
            "cannot be differentiated again: backward with create_graph=True (torch.autograd.grad(..., "
            "create_graph=True), double backward) needs backend='torch'"
        )


def check_surrogate(backend_name: str, p: NeuronParams) -> None:
    """Kernels are generated from a :class:`~flashspike.surrogate.SurrogateFunction`'s formulas; any
    other callable surrogate has none to generate them from."""
    if not isinstance(p.surrogate, SurrogateFunction):
        raise TypeError(
            f"backend {backend_name!r} generates its kernels from the formulas of a flashspike.surrogate."
            f"SurrogateFunction, and this neuron's surrogate_function {p.surrogate!r} is another callable; use "
            "backend='torch' for it, or state it as a SurrogateFunction subclass (see flashspike.surrogate)"
        )


def decay_operand(w: torch.Tensor | None, p: NeuronParams, x: torch.Tensor):
    """PLIF's k = sigmoid(w) as the kernels read it (one float32 element on x's device; float64 for a
    float64 ``x``, which only the PyTorch kernel set receives), else None."""
    if not p.parametric:
        return None
    if not isinstance(w, torch.Tensor) or w.numel() != 1:
        raise ValueError(f"a parametric (PLIF) neuron needs its learnable w as a one-element tensor, got {w!r}")
    if w.device != x.device:
        raise ValueError(f"PLIF's w is on {w.device} but the input is on {x.device}; move the node with .to()")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.sigmoid(w.detach().to(dtype)).reshape(1)


class FusedMultiStep(torch.autograd.Function):
    """``x`` is the sequence, or (``repeat`` = T) one step that every time step receives; ``w`` is
    PLIF's learnable parameter (None for other neurons)."""

    @staticmethod
    def forward(ctx, x, v_init, w, kernels, p: NeuronParams, store_v_seq: bool, repeat: int | None):
        save_h = any(ctx.needs_input_grad[:3])
        x_seq = x if repeat is None else x.expand(repeat, *x.shape)  # read in place: x_step is 0
        decay = decay_operand(w, p, x)
        spike, v_out, h = kernels.forward(x_seq, v_init, p, save_h, store_v_seq, decay)
        if save_h:
            ctx.save_for_backward(h, v_init if p.backward_reads_v_prev else None, decay)
            ctx.kernels, ctx.p, ctx.store_v_seq, ctx.repeated = kernels, p, store_v_seq, repeat is not None
            ctx.w_like = None if w is None else (w.dtype, w.shape)
        ctx.set_materialize_grads(False)
        return spike, v_out

    @staticmethod
    def backward(ctx, grad_spike, grad_v_out):
        refuse_create_graph()
        h, v_init, decay = ctx.saved_tensors
        if grad_spike is None and grad_v_out is None:
            return None, None, None, None, None, None, None
        grad_x, grad_v_init, grad_w = ctx.kernels.backward(
            h, grad_spike, grad_v_out, ctx.p, ctx.store_v_seq, ctx.needs_input_grad[1], ctx.repeated, v_init, decay
        )
        if grad_w is not None and ctx.needs_input_grad[2]:
            dtype, shape = ctx.w_like
            grad_w = grad_w.to(dtype).reshape(shape)
        else:
            grad_w = None
        return grad_x, grad_v_init, grad_w, None, None, None, None


def fused_multi_step(kernels, x_seq: torch.Tensor, v_init, p: NeuronParams, store_v_seq: bool, w=None):
    """The reference backend's ``multi_step`` contract, run by a kernel set.

    The outputs keep the input's layout and shape: no view is made on the way in or out (each costs
    microseconds of host time, and a node in the backward graph).
    """
    x = sequence_layout(x_seq)
    v = initial_state(v_init, x, p)
    w = w if p.parametric else None
    if not (torch.is_grad_enabled() and (x.requires_grad or (v is not None and v.requires_grad)
                                         or (w is not None and w.requires_grad))):
        # Nothing to differentiate: the launcher alone, without the autograd Function's host work.
        spike, v_out, _ = kernels.forward(x, v, p, False, store_v_seq, decay_operand(w, p, x))
    else:
        step = repeated_step(x)
        if step is None:
            spike, v_out = FusedMultiStep.apply(x, v, w, kernels, p, store_v_seq, None)
        else:  # its gradient is summed over T in the kernel, never written T times and reduced
            spike, v_out = FusedMultiStep.apply(step, v, w, kernels, p, store_v_seq, x.shape[0])
    if store_v_seq:
        return spike, v_out[-1], v_out
    return spike, v_out, None


# The kernels load and store these and compute in float32.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class KernelBackend:
    """What the fused-kernel backends share. A subclass sets ``name``, implements ``check_input`` and
    ``kernel_set(p)`` (the kernel set that runs options ``p``)."""

    name: str

    def __init__(self):
        self._warned_dtypes: set = set()

    def kernel_set(self, p: NeuronParams):
        raise NotImplementedError

    def multi_step(self, x_seq: torch.Tensor, v_init, p: NeuronParams, store_v_seq: bool, w=None):
        check_surrogate(self.name, p)
        if x_seq.dtype not in KERNEL_DTYPES:
            # float64: float32 kernels would lose the precision asked for; the reference keeps it.
            if x_seq.dtype not in self._warned_dtypes:
                self._warned_dtypes.add(x_seq.dtype)
                warnings.warn(
                    f"backend {self.name!r} has no {x_seq.dtype} kernels (they compute in float32); running "
                    "the 'torch' reference for this dtype instead. This notice is shown once.",
                    stacklevel=3,
                )
            return reference.BACKEND.multi_step(x_seq, v_init, p, store_v_seq, w)
        return fused_multi_step(self.kernel_set(p), x_seq, v_init, p, store_v_seq, w)
