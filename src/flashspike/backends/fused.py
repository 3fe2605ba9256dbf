"""What every fused-kernel backend shares: the autograd Function and the input rules.

A kernel backend supplies a *kernel set* with two launchers over flat ``[T, N]`` tensors:

``forward(x, v_init, p, save_h, store_v_seq) -> (spike, v_out, h)``
    ``x`` is ``[T, N]`` contiguous; ``v_init`` is ``[N]`` contiguous of x's dtype, or None for "every
    neuron at ``p.v_rest``". ``spike`` is ``[T, N]``; ``v_out`` is V for all steps ``[T, N]`` when
    ``store_v_seq`` else the last V ``[N]``; ``h`` (H, the pre-reset potential, what backward needs) is
    ``[T, N]`` when ``save_h`` else None. All outputs have x's dtype.

``backward(h, grad_spike, grad_v_out, p, store_v_seq, need_grad_v_init) -> (grad_x, grad_v_init)``
    ``grad_spike`` and ``grad_v_out`` are shaped like ``spike`` and ``v_out``, or None where no
    gradient flows (treat as zero: nothing is materialized). They may be non-contiguous (for example
    the expanded ones of ``y.sum().backward()``). ``grad_v_init`` is ``[N]`` or None when not asked for.

Launchers allocate their outputs with :func:`forward_outputs` / :func:`backward_outputs`, through
:func:`new_output`: torch's allocator (so CUDA graph capture works), which the tests switch to
NaN-filled tensors so that an element a kernel forgets to write fails.

This module turns the launchers into a differentiable ``multi_step`` with the same contract as the
reference backend.
"""

from __future__ import annotations

import warnings

import torch

from ..params import NeuronParams
from . import reference


# Tests set this to True: outputs then start as NaN instead of whatever memory held.
POISON_OUTPUTS = False


def new_output(shape, like: torch.Tensor) -> torch.Tensor:
    """An uninitialized kernel output of ``like``'s dtype and device."""
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def forward_outputs(x: torch.Tensor, save_h: bool, store_v_seq: bool):
    """The forward launcher's outputs for ``x`` ``[T, N]``, as the contract shapes them: (spike, v_out, h)."""
    steps, n = x.shape
    spike = new_output((steps, n), x)
    v_out = new_output((steps, n) if store_v_seq else (n,), x)
    return spike, v_out, (new_output((steps, n), x) if save_h else None)


def backward_outputs(h: torch.Tensor, need_grad_v_init: bool):
    """The backward launcher's outputs for ``h`` ``[T, N]``: (grad_x, grad_v_init or None)."""
    return new_output(h.shape, h), (new_output((h.shape[1],), h) if need_grad_v_init else None)


class FusedMultiStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v_init, kernels, p: NeuronParams, store_v_seq: bool):
        save_h = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        spike, v_out, h = kernels.forward(x, v_init, p, save_h, store_v_seq)
        if save_h:
            ctx.save_for_backward(h)
            ctx.kernels, ctx.p, ctx.store_v_seq = kernels, p, store_v_seq
        ctx.set_materialize_grads(False)
        return spike, v_out

    @staticmethod
    def backward(ctx, grad_spike, grad_v_out):
        (h,) = ctx.saved_tensors
        if grad_spike is None and grad_v_out is None:
            return None, None, None, None, None
        grad_x, grad_v_init = ctx.kernels.backward(
            h, grad_spike, grad_v_out, ctx.p, ctx.store_v_seq, ctx.needs_input_grad[1]
        )
        return grad_x, grad_v_init, None, None, None


def flatten_inputs(x_seq: torch.Tensor, v_init, p: NeuronParams):
    """``x_seq`` as a contiguous ``[T, N]`` tensor and ``v_init`` as ``[N]`` (None for "at rest").

    Also returns whether ``x_seq`` was already 2-D, in which case no views were made (each costs
    microseconds of host time) and none need undoing.
    """
    flat = x_seq.dim() == 2
    x = x_seq if flat else x_seq.reshape(x_seq.shape[0], -1)
    if not x.is_contiguous():
        x = x.contiguous()
    if isinstance(v_init, torch.Tensor):
        v = (v_init if flat else v_init.reshape(-1)).contiguous()
    elif v_init == p.v_rest:
        v = None
    else:
        v = torch.full((x.shape[1],), v_init, dtype=x.dtype, device=x.device)
    return x, v, flat


def unflatten_outputs(spike, v_out, shape: torch.Size, flat: bool, store_v_seq: bool):
    """The kernel outputs back in the input's shape, as ``(spike_seq, v_last, v_seq or None)``."""
    if not flat:
        spike, v_out = spike.view(shape), v_out.view(shape if store_v_seq else shape[1:])
    if store_v_seq:
        return spike, v_out[-1], v_out
    return spike, v_out, None


def fused_multi_step(kernels, x_seq: torch.Tensor, v_init, p: NeuronParams, store_v_seq: bool):
    """The reference backend's ``multi_step`` contract, run by a kernel set."""
    x, v, flat = flatten_inputs(x_seq, v_init, p)
    spike, v_out = FusedMultiStep.apply(x, v, kernels, p, store_v_seq)
    return unflatten_outputs(spike, v_out, x_seq.shape, flat, store_v_seq)


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

    def multi_step(self, x_seq: torch.Tensor, v_init, p: NeuronParams, store_v_seq: bool):
        if x_seq.dtype not in KERNEL_DTYPES:
            # float64: float32 kernels would lose the precision asked for; the reference keeps it.
            if x_seq.dtype not in self._warned_dtypes:
                self._warned_dtypes.add(x_seq.dtype)
                warnings.warn(
                    f"backend {self.name!r} has no {x_seq.dtype} kernels (they compute in float32); running "
                    "the 'torch' reference for this dtype instead. This notice is shown once.",
                    stacklevel=3,
                )
            return reference.BACKEND.multi_step(x_seq, v_init, p, store_v_seq)
        return fused_multi_step(self.kernel_set(p), x_seq, v_init, p, store_v_seq)
