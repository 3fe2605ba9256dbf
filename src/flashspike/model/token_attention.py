"""Spikformer's attention product on token-major spikes: ``Q (s · Kᵀ V)`` per head, the heads side by side
in each token, in one kernel each way where Triton runs (:mod:`.attention_triton`).

``torch.matmul`` takes per-head operands of one batch stride: the heads of token-major Q, K and V are
strided twice (by sequence and by head), so it copies each of them, copies the product back into tokens,
and copies again for the backward. The fused product reads Q, K and V where the neuron wrote them,
writes the tokens' layout, and keeps only the spikes for the backward (in one bit each when asked,
as :func:`flashspike.memory.spike_bits.matmul` keeps them on the matmul path). Its values and gradients
are ``torch.matmul``'s: it rounds where matmul rounds, and the spikes' products are sums of integers.

The neuron that fires on the product keeps no H for its backward (:mod:`flashspike.backends.recompute`):
it computes the product again from the kept spikes (one more run of the forward kernel), and the same
spikes give the same product, bit for bit. Where the spikes are kept in bits, the spikes it unpacks for
that serve the product's own backward too, which runs right after it: one unpacking per backward.
"""

from __future__ import annotations

import functools

import torch
from torch.autograd.function import once_differentiable

from ..backends import recompute
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


def _rows(kept: torch.Tensor, unpacked_as) -> torch.Tensor:
    """The spikes ``[B, L, 3·C]`` the product keeps: themselves, or (``unpacked_as``: their shape, strides
    and dtype) unpacked from their bits."""
    if unpacked_as is None:
        return kept
    shape, strides, dtype = unpacked_as
    return spike_bits.unpack(kept, shape, strides, _ROWS_ORDER, dtype)


class _Unpacked:
    """The spikes unpacked from the product's bits by the backward of the neuron that fires on the
    product, held until the product's backward takes them (the next node to run, as the product's
    output is that neuron's input)."""

    __slots__ = ("rows",)

    def __init__(self):
        self.rows = None

    def take(self):
        rows, self.rows = self.rows, None
        return rows


def _product_again(kept: torch.Tensor, heads: int, scale: float, unpacked_as, unpacked: _Unpacked | None = None
                   ) -> torch.Tensor:
    """The fused product's output, computed again from the spikes it keeps (the same kernel on the same
    spikes: the same bits); spikes unpacked from bits are left in ``unpacked`` for the product's backward."""
    rows = _rows(kept, unpacked_as)
    if unpacked is not None and unpacked_as is not None:
        unpacked.rows = rows
    return _kernels().forward(rows, heads, scale)


class _FusedProduct(torch.autograd.Function):
    """The product of ``rows`` (``[B, L, 3·C]`` spikes), keeping ``kept`` for the backward: ``rows`` itself,
    or its bits (``unpacked_as`` then says how to unpack them, unless ``unpacked`` holds them unpacked)."""

    @staticmethod
    def forward(ctx, rows, kept, heads, scale, unpacked_as, unpacked):
        ctx.save_for_backward(kept)
        ctx.heads, ctx.scale, ctx.unpacked_as, ctx.unpacked = heads, scale, unpacked_as, unpacked
        return _kernels().forward(rows, heads, scale)

    @staticmethod
    @once_differentiable  # a gradient of the gradient raises instead of silently missing
    def backward(ctx, grad):
        (kept,) = ctx.saved_tensors
        rows = ctx.unpacked.take()
        if rows is None:
            rows = _rows(kept, ctx.unpacked_as)
        grad_rows = _kernels().backward(rows, grad.contiguous(), ctx.heads, ctx.scale)
        return grad_rows, None, None, None, None, None


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
    scale = float(scale)
    rows = qkv.transpose(2, 3).reshape(T * N, L, C3)
    kept, unpacked_as = rows, None
    if in_bits and torch.is_grad_enabled() and spike_bits.is_spike_input(qkv):
        with torch.no_grad():
            kept = spike_bits.pack(rows, _ROWS_ORDER)
        unpacked_as = (rows.shape, rows.stride(), rows.dtype)
    unpacked = _Unpacked()
    out = _FusedProduct.apply(rows, kept, heads, scale, unpacked_as, unpacked)
    if out.requires_grad:
        # The neuron that fires on the product then keeps no H: its backward computes the product again
        # from the spikes kept here, and its forward again from that.
        recompute.mark(out, functools.partial(_product_again, heads=heads, scale=scale,
                                              unpacked_as=unpacked_as, unpacked=unpacked), (kept,))
    return out.view(T, N, L, C3 // 3).transpose(2, 3)
