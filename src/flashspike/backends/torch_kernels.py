"""A kernel set (the contract in :mod:`.fused`) written in plain PyTorch: vectorized over N, a loop over T.

This is what the custom operators of :mod:`.ops` run for backend 'torch' (under ``torch.compile``),
where a differentiable loop of small autograd steps cannot live inside one opaque operator. Eager
calls with backend 'torch' keep using :mod:`.reference`, which stays the autograd reference that
this file is tested against.

Both launchers evaluate :func:`.step_code.forward_values` / :func:`.step_code.backward_values` with
tensors (:data:`~flashspike.codegen.TORCH`), the very functions the CUDA and Triton kernels are
generated from, so this file states no formula. As the kernels do, float16 and bfloat16 are computed
in float32 and rounded on store; float32 and float64 are computed in their own precision.
"""

from __future__ import annotations

import torch

from ..codegen import TORCH
from ..params import NeuronParams
from . import fused
from .step_code import backward_values, forward_values

__all__ = ["TorchKernels", "KERNELS", "kernel_set"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class TorchKernels:
    """The launchers of :mod:`.fused`'s contract; stateless, so one instance serves every layer."""

    def forward(self, x, v_init, p: NeuronParams, save_h: bool, store_v_seq: bool):
        steps = x.shape[0]
        spike, v_out, h_seq = fused.forward_outputs(x, save_h, store_v_seq)
        wide = _compute_dtype(x.dtype)
        # A Python float is a valid V[-1] for the step functions: no [N] tensor of v_rest is built.
        v = p.v_rest if v_init is None else v_init.to(wide)
        for t in range(steps):
            h, spike_t, v = forward_values(x[t].to(wide), v, p, TORCH)
            spike[t] = spike_t
            if save_h:
                h_seq[t] = h
            if store_v_seq:
                v_out[t] = v
        if not store_v_seq:
            v_out[:] = v
        return spike, v_out, h_seq

    def backward(self, h_seq, grad_spike, grad_v_out, p: NeuronParams, store_v_seq: bool, need_grad_v_init: bool,
                 sum_grad_x: bool = False):
        steps = h_seq.shape[0]
        grad_x, grad_v_init = fused.backward_outputs(h_seq, need_grad_v_init, sum_grad_x)
        grad_x_sum = 0.0
        wide = _compute_dtype(h_seq.dtype)
        # ∂L/∂V[t], carried backwards; an absent output gradient is a Python 0.0, never a zero tensor.
        grad_v = 0.0
        if grad_v_out is not None and not store_v_seq:
            grad_v = grad_v_out.to(wide)  # the last V is the only V output: it enters at t = T−1
        for t in reversed(range(steps)):
            if grad_v_out is not None and store_v_seq:
                grad_v = grad_v + grad_v_out[t].to(wide)
            grad_spike_t = 0.0 if grad_spike is None else grad_spike[t].to(wide)
            _, grad_x_t, grad_v = backward_values(h_seq[t].to(wide), grad_spike_t, grad_v, p, TORCH)
            if sum_grad_x:
                grad_x_sum = grad_x_sum + grad_x_t
            else:
                grad_x[t] = grad_x_t
        if sum_grad_x:
            grad_x[:] = grad_x_sum
        if need_grad_v_init:
            grad_v_init[:] = grad_v
        return grad_x, grad_v_init


#: The one instance; :func:`kernel_set` is the lookup every kernel backend offers.
KERNELS = TorchKernels()


def kernel_set(p: NeuronParams) -> TorchKernels:
    """The kernel set for ``p``'s options (the same stateless object for all of them)."""
    return KERNELS
