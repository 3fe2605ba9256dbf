"""A kernel set (the contract in :mod:`.kernel_set`) written in plain PyTorch: vectorized over N, a loop over T.

This is what the custom operators of :mod:`.operators` run for backend 'torch' (under ``torch.compile``),
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
from .kernel_set import KernelSet
from .reference import compute_dtype
from .step_code import backward_values, forward_values, previous_v

__all__ = ["TorchKernels", "KERNELS", "kernel_set"]


class TorchKernels(KernelSet):
    """The launchers of :mod:`.kernel_set`'s contract; stateless, so one instance serves every layer."""

    def launch_forward(self, x, v_init, spike, v_out, h_seq, decay, p: NeuronParams, normalize=None,
                       spike_bits=None, addend=None) -> bool:
        store_v_seq = v_out is not None and v_out.dim() == x.dim()
        wide = compute_dtype(x.dtype)
        if normalize is not None:
            x = _normalized(x, *normalize)
        decay = None if decay is None else decay.to(wide)
        # A Python float is a valid V[-1] for the step functions: no [N] tensor of v_rest is built.
        v = p.v_rest if v_init is None else v_init.to(wide)
        if v_init is None and p.exponential:  # EIF's charge takes exp(V): a tensor
            v = torch.full(x.shape[1:], p.v_rest, dtype=wide, device=x.device)
        for t in range(x.shape[0]):
            h, spike_t, v = forward_values(x[t].to(wide), v, p, TORCH, decay)
            if spike is not None:
                spike[t] = spike_t if addend is None else addend[t].to(wide) + spike_t
            if h_seq is not None:
                h_seq[t] = h
            if store_v_seq:
                v_out[t] = v
        if v_out is not None and not store_v_seq:
            v_out[:] = v
        return False  # (writes_spike_bits is False: never asked)

    def launch_backward(self, h_seq, gs_mode, grad_spike, gv_mode, grad_v_out, grad_x, grad_v_init, v_init, decay,
                        p: NeuronParams, store_v_seq: bool):
        # Indexing an expanded scalar gradient reads its one element: every mode is a tensor or None.
        sum_grad_x = grad_x.dim() < h_seq.dim()
        grad_x_sum = 0.0
        wide = compute_dtype(h_seq.dtype)
        decay = None if decay is None else decay.to(wide)
        grad_w = 0.0
        sum_dtype = torch.float64 if wide == torch.float64 else torch.float32
        # ∂L/∂V[t], carried backwards; an absent output gradient is a Python 0.0, never a zero tensor.
        grad_v = 0.0
        if grad_v_out is not None and not store_v_seq:
            grad_v = grad_v_out.to(wide)  # the last V is the only V output: it enters at t = T−1
        for t in reversed(range(h_seq.shape[0])):
            if grad_v_out is not None and store_v_seq:
                grad_v = grad_v + grad_v_out[t].to(wide)
            grad_spike_t = 0.0 if grad_spike is None else grad_spike[t].to(wide)
            v_prev = None
            if p.backward_reads_v_prev:
                if t > 0:
                    v_prev = previous_v(h_seq[t - 1].to(wide), p, TORCH)
                else:
                    v_prev = (torch.full(h_seq.shape[1:], p.v_rest, dtype=wide, device=h_seq.device)
                              if v_init is None else v_init.to(wide))
            _, grad_x_t, grad_v, grad_w_t = backward_values(h_seq[t].to(wide), grad_spike_t, grad_v, p, TORCH,
                                                            v_prev, decay)
            if grad_w_t is not None:
                grad_w = grad_w + grad_w_t.sum(dtype=sum_dtype)
            if sum_grad_x:
                grad_x_sum = grad_x_sum + grad_x_t
            else:
                grad_x[t] = grad_x_t
        if sum_grad_x:
            grad_x[:] = grad_x_sum
        if grad_v_init is not None:
            grad_v_init[:] = grad_v
        if not p.parametric:
            return None
        return torch.as_tensor(grad_w, dtype=sum_dtype, device=h_seq.device).reshape(())


def _normalized(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, channel_stride: int, channels: int):
    """``x * scale[c] + shift[c]`` rounded to x's dtype (``x``: a sequence as the kernels read it), for
    :meth:`KernelSet.recompute_h`. The product and sum are taken in float64 and rounded to float32
    (the kernels' fused multiply-add rounds once: the two agree but for rare double-rounding ties)."""
    steps = x.shape[0]
    order = sorted(range(1, x.dim()), key=lambda d: -x.stride(d))  # a step's dimensions in memory order
    in_memory_order = x.permute(0, *order)
    step_memory = in_memory_order.reshape(steps, -1)
    channel = (torch.arange(step_memory.shape[1], device=x.device) // channel_stride) % channels
    wide = torch.addcmul(shift.double()[channel], step_memory.double(), scale.double()[channel])
    normalized = (wide if x.dtype == torch.float64 else wide.float()).to(x.dtype).reshape(in_memory_order.shape)
    inverse = [0] * x.dim()
    for position, d in enumerate((0, *order)):
        inverse[d] = position
    return normalized.permute(inverse)


#: The one instance; :func:`kernel_set` is the lookup every kernel backend offers.
KERNELS = TorchKernels()


def kernel_set(p: NeuronParams) -> TorchKernels:
    """The kernel set for ``p``'s options (the same stateless object for all of them)."""
    return KERNELS
