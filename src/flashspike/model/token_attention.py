"""Spikformer's attention product on token-major spikes: ``Q (s · Kᵀ V)`` per head, the heads side by side
in each token, in one kernel each way where Triton runs (:mod:`.attention_triton`).

``torch.matmul`` takes per-head operands of one batch stride: the heads of token-major Q, K and V are
strided twice (by sequence and by head), so it copies each of them, copies the product back into tokens,
and copies again for the backward. The fused product reads Q, K and V where the neuron wrote them,
writes the tokens' layout, and keeps only the spikes for the backward (in one bit each when asked,
as :func:`flashspike.memory.spike_bits.matmul` keeps them on the matmul path). Its values and gradients
are ``torch.matmul``'s: it rounds where matmul rounds, and the spikes' products are sums of integers.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..memory import spike_bits
from ..optional_triton import optional_kernels

__all__ = ["attention_product", "reference_product"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _kernels():
    return optional_kernels("flashspike.model.attention_triton")


def _runs_fused(x: torch.Tensor) -> bool:
    """Where the fused kernels run: CUDA tensors (tests also send CPU tensors through Triton's
    interpreter by replacing this function)."""
    return x.is_cuda


def reference_product(qkv: torch.Tensor, heads: int, scale: float, product=torch.matmul) -> torch.Tensor:
    """The product with ``product`` (``torch.matmul``, or a matmul that keeps its operands otherwise):
    ``qkv`` ``[T, N, 3·C, L]`` -> ``[T, N, C, L]``, token-major (one copy)."""
    T, N, C3, L = qkv.shape
    C = C3 // 3
    # q, k, v: views [T, N, heads, L, head_dim] of the [T, N, L, 3, heads, head_dim] memory. Unbound where
    # they lie side by side, so the backward stacks their gradients into qkv's layout at once.
    q, k, v = (t.transpose(2, 3) for t in qkv.transpose(2, 3).unflatten(3, (3, heads, C // heads)).unbind(3))
    # Q (s · Kᵀ V) per head: [L, head_dim] x ([head_dim, L] x [L, head_dim]), which is Q Kᵀ V; the
    # token-major form of SpikingJelly's channel-major (V Kᵀ) Q. Sums of spikes, times s (0.125 in the
    # models: exact in every float type, for any order): the same values as PyTorch's order gives.
    attention = product(q, product(k.transpose(-2, -1), v) * scale)
    # the heads side by side in each token: [T, N, L, C] in memory (one copy), seen as [T, N, C, L]
    return attention.permute(0, 1, 3, 2, 4).reshape(T, N, L, C).transpose(2, 3)


_ROWS_ORDER = [0, 1, 2]  # the memory order of the dense rows [B, L, 3·C] the kernels take


class _FusedProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, heads, scale, in_bits):
        # in bits: the spikes packed eight to a byte, unpacked again for the backward's kernel
        ctx.save_for_backward(spike_bits.pack(rows, _ROWS_ORDER) if in_bits else rows)
        ctx.unpacked_as = (rows.shape, rows.stride(), rows.dtype) if in_bits else None
        ctx.heads, ctx.scale = heads, scale
        return _kernels().forward(rows, heads, scale)

    @staticmethod
    @once_differentiable  # a gradient of the gradient raises instead of silently missing
    def backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        if ctx.unpacked_as is not None:
            shape, strides, dtype = ctx.unpacked_as
            rows = spike_bits.unpack(rows, shape, strides, _ROWS_ORDER, dtype)
        return _kernels().backward(rows, grad.contiguous(), ctx.heads, ctx.scale), None, None, None


def _fusable(qkv: torch.Tensor, heads: int) -> bool:
    T, N, C3, L = qkv.shape
    if qkv.dtype not in _DTYPES or not _runs_fused(qkv) or torch.compiler.is_compiling():
        return False
    # token-major and dense: [T, N, L, 3·C] in memory
    if qkv.transpose(2, 3).stride() != (N * L * C3, L * C3, C3, 1):
        return False
    kernels = _kernels()
    return kernels is not None and kernels.fits(L, C3 // 3 // heads)


def attention_product(qkv: torch.Tensor, heads: int, scale: float, in_bits: bool = False) -> torch.Tensor:
    """``Q (s · Kᵀ V)`` of every head: ``qkv`` ``[T, N, 3·C, L]`` (Q, K, V in that order along the channels,
    each head's ``C / heads`` channels together) -> ``[T, N, C, L]``, the heads side by side in each
    token. Fused where Triton runs token-major spikes (CUDA; not while compiling), else
    :func:`reference_product`. ``in_bits``: Q, K and V are kept in one bit each for the backward when
    their autograd history proves them spikes (:func:`flashspike.memory.spike_bits.is_spike_input`),
    through :func:`flashspike.memory.spike_bits.matmul` on the matmul path."""
    if not _fusable(qkv, heads):
        return reference_product(qkv, heads, scale, spike_bits.matmul if in_bits else torch.matmul)
    T, N, C3, L = qkv.shape
    in_bits = in_bits and torch.is_grad_enabled() and spike_bits.is_spike_input(qkv)
    out = _FusedProduct.apply(qkv.transpose(2, 3).reshape(T * N, L, C3), heads, float(scale), in_bits)
    return out.view(T, N, L, C3 // 3).transpose(2, 3)
