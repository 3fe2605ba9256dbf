"""Memory of a multi-step call: which input layouts the kernels read in place, how outputs, initial
state and gradient operands are laid out, and the allocation of all of them.

A sequence ``x`` of shape ``[T, *]`` is seen only as memory: T blocks of ``N = x.numel() // T``
elements, one block per step, each block dense, in any order of the step's dimensions, and step t's
block ``x.stride(0) * t`` elements after the first (:func:`sequence_layout`). A contiguous tensor is
one such layout; so is a channels_last activation ``[T, B, C, H, W]`` (strides ``(B·H·W·C, H·W·C, 1,
W·C, C)``), and so is one step repeated over T by ``expand`` (first stride 0: a static input is read
in place, never copied T times). Element ``i`` of every block is the same neuron. Outputs are always
T separate blocks laid out like x's steps (:func:`sequence_strides`), so the eager path, the
compiled operators and their fake implementations all state the same strides.

Everything here allocates through torch's allocator on the current device (so CUDA graph capture
works) and never waits for the device. The tests set :data:`POISON_OUTPUTS`: outputs then start as
NaN, so an element a kernel forgets to write fails.
"""

from __future__ import annotations

import torch

from ..params import NeuronParams
from .step_code import GRAD_ABSENT, GRAD_DENSE, GRAD_SCALAR

__all__ = ["POISON_OUTPUTS", "same_layout", "sequence_layout", "sequence_strides", "repeated_step", "call_operands",
           "multi_step_outputs", "initial_state", "step_operand", "decay_operand", "forward_outputs",
           "spike_bits_output", "recomputed_h_output", "backward_outputs", "grad_operand", "grad_w_partials",
           "sum_grad_w", "new_output"]

# Tests set this to True: outputs then start as NaN instead of whatever memory held.
POISON_OUTPUTS = False

_empty_strided = torch.empty_strided
_empty_like = torch.empty_like
_is_grad_enabled = torch.is_grad_enabled


def _poisoned(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.fill_(float("nan")) if POISON_OUTPUTS else tensor


# ---- input layouts ----

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


def same_layout(strides, wanted, shape) -> bool:
    """Whether a tensor of ``shape`` with ``strides`` has its elements where ``wanted`` strides put
    them: the strides are equal but where a dimension has size 1 (whose stride is never used; PyTorch
    gives such dimensions any stride, a gradient of a ``[T, N, C, 1, 1]`` activation for one)."""
    return strides == wanted or all(a == b or size == 1 for a, b, size in zip(strides, wanted, shape))


def _contiguous_strides(shape) -> tuple:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def sequence_strides(x: torch.Tensor) -> tuple:
    """The strides of every ``[T, *]`` output of a call on ``x`` (any layout): those of
    :func:`sequence_layout`'s result, with a repeated step's first stride 0 made a block of its own."""
    if not (x.is_contiguous() or _readable_in_place(x)):
        return _contiguous_strides(x.shape)
    if x.stride(0) == 0 and x.shape[0] > 1:  # one step repeated: each output step gets its own block
        return _separate_blocks(x)
    return x.stride()


def _separate_blocks(x: torch.Tensor) -> tuple:
    """The strides of ``x``'s steps laid one after another."""
    return (x.numel() // x.shape[0], *x.stride()[1:])


def repeated_step(x: torch.Tensor, traced: bool = False) -> torch.Tensor | None:
    """The step ``s`` when ``x`` is ``s.expand(T, *s.shape)`` (or ``s.unsqueeze(0).expand(...)``) made
    under autograd from a tensor that requires grad, else None.

    Autograd would hand such an ``x`` a ``[T, *]`` gradient and then sum it over T; giving ``s`` to the
    Function instead lets the kernel add the T gradients in registers and write one step. (A hook
    registered on ``x`` itself is then not called: the gradient goes to ``s`` directly.)

    Compiled code (``traced``) cannot read ``x._base``: there the step is ``x[0]``, the same values,
    whose gradient the compiler carries back through the view to ``s``.
    """
    if x.stride(0) != 0 or x.shape[0] == 1:
        return None
    if traced:
        return x[0] if x.requires_grad else None
    if x.grad_fn is None:
        return None
    step = x._base  # the tensor x is a view of
    if (step is None or not step.requires_grad or step.shape != x.shape[1:] or step.stride() != x.stride()[1:]
            or step.storage_offset() != x.storage_offset()):
        return None
    return step


def call_operands(x_seq: torch.Tensor, v_init, p: NeuronParams, w, traced: bool = False):
    """``(x, v, w, differentiated, step)``: one call's operands as the kernel sets read them, for the
    eager Function and the compiled operators alike. ``x`` is in sequence layout, ``v`` is
    :func:`initial_state`, ``w`` is PLIF's parameter (None for other neurons), ``differentiated``
    whether any of them needs a gradient, and ``step`` the one step ``x`` repeats when its gradient is
    to be summed over T in the kernel (:func:`repeated_step`), else None."""
    x = sequence_layout(x_seq)
    v = initial_state(v_init, x, p)
    if not p.parametric:
        w = None
    if _is_grad_enabled() and (x.requires_grad or (v is not None and v.requires_grad)
                               or (w is not None and w.requires_grad)):
        return x, v, w, True, repeated_step(x, traced)
    return x, v, w, False, None


def multi_step_outputs(spike: torch.Tensor, v_out: torch.Tensor, store_v_seq: bool):
    """A kernel set's outputs as the ``multi_step`` contract returns them: (spike_seq, v_last, v_seq or None)."""
    if store_v_seq:
        return spike, v_out[-1], v_out
    return spike, v_out, None


def initial_state(v_init, x: torch.Tensor, p: NeuronParams):
    """``v_init`` as the launchers take it for ``x`` (in sequence layout): None for "at rest", else a
    tensor laid out like one step of ``x`` (copied into that layout when it is not)."""
    if isinstance(v_init, torch.Tensor):
        return step_operand(v_init, x)
    if v_init == p.v_rest:
        return None
    return _empty_strided(x.shape[1:], x.stride()[1:], dtype=x.dtype, device=x.device).fill_(v_init)


def step_operand(v: torch.Tensor | None, like: torch.Tensor):
    """``v`` (one step's values, or None) laid out like one step of ``like``, as the kernels read it:
    itself when it is, else a copy."""
    if v is None or same_layout(v.stride(), like.stride()[1:], v.shape):
        return v
    return _empty_strided(like.shape[1:], like.stride()[1:], dtype=like.dtype, device=like.device).copy_(v)


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


# ---- outputs ----

def new_output(shape, like: torch.Tensor) -> torch.Tensor:
    """An uninitialized contiguous kernel output of ``like``'s dtype and device."""
    return _poisoned(torch.empty(shape, dtype=like.dtype, device=like.device))


def _sequence_output(like: torch.Tensor, repeated: bool) -> torch.Tensor:
    if repeated:  # one step repeated (first stride 0): give each step its own block
        return _poisoned(_empty_strided(like.shape, _separate_blocks(like), dtype=like.dtype, device=like.device))
    # empty_like keeps the strides of a dense, non-overlapping tensor, which every other sequence in
    # sequence layout is (and it costs a third of empty_strided's host time).
    return _poisoned(_empty_like(like))


def _step_output(like: torch.Tensor) -> torch.Tensor:
    return _poisoned(like.new_empty_strided(like.shape[1:], like.stride()[1:]))


def forward_outputs(x: torch.Tensor, save_h: bool, store_v_seq: bool):
    """The forward launcher's outputs for ``x`` (in sequence layout): (spike, v_out, h), laid out by
    :func:`sequence_strides`; ``v_out`` is V of every step with ``store_v_seq``, else the last V; ``h``
    is None without ``save_h``."""
    repeated = not x.stride(0) and x.shape[0] > 1
    spike = _sequence_output(x, repeated)
    v_out = _sequence_output(x, repeated) if store_v_seq else _step_output(x)
    return spike, v_out, (_sequence_output(x, repeated) if save_h else None)


def spike_bits_output(spike: torch.Tensor) -> torch.Tensor | None:
    """Memory for ``spike`` (a forward's output: T dense blocks, one after another) packed one bit per
    element in the order of its memory, eight to a byte; None when a step's elements fill no whole
    number of bytes (the kernels write each step's bytes on their own)."""
    count = spike.numel()
    if (count // spike.shape[0]) % 8:
        return None
    return torch.empty(count // 8, dtype=torch.uint8, device=spike.device)


def recomputed_h_output(x: torch.Tensor) -> torch.Tensor:
    """H recomputed for ``x`` (in sequence layout, or one step expanded over T), laid out as the
    forward laid out its H."""
    return _sequence_output(x, not x.stride(0) and x.shape[0] > 1)


def backward_outputs(h: torch.Tensor, need_grad_v_init: bool, sum_grad_x: bool = False):
    """The backward launcher's outputs for ``h``: (grad_x, grad_v_init or None); ``grad_x`` is one
    step (the sum over T) with ``sum_grad_x``."""
    grad_x = _step_output(h) if sum_grad_x else _poisoned(_empty_like(h))
    return grad_x, (_step_output(h) if need_grad_v_init else None)


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
    wanted = h.stride() if whole else h.stride()[1:]
    if not same_layout(strides, wanted, grad.shape):
        grad = _poisoned(_empty_strided(grad.shape, wanted, dtype=h.dtype, device=h.device)).copy_(grad)
    return GRAD_DENSE, grad


def grad_w_partials(count: int, like: torch.Tensor) -> torch.Tensor:
    """``count`` float32 slots on ``like``'s device, one per program (Triton) or thread (CUDA) of a
    backward launch, for its share of PLIF's ∂L/∂w; torch sums them (see :func:`sum_grad_w`)."""
    return _poisoned(torch.empty(count, dtype=torch.float32, device=like.device))


def sum_grad_w(partials: torch.Tensor) -> torch.Tensor:
    """∂L/∂w, a float32 0-d tensor, from a backward launch's partial sums."""
    return partials.sum()
