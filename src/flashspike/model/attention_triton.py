"""Spikformer's attention product, ``Q (s · Kᵀ V)`` for every head, as Triton kernels that read Q, K and V
where the Q/K/V neuron wrote them and write the heads side by side in each token (see
:mod:`.token_attention`). Imported only where Triton runs the tensors (CUDA, or the CPU interpreter in
tests).

One program takes one (sequence, head): its ``[L, head_dim]`` Q, K and V tiles, rows ``3·C`` apart in
the token-major ``[B, L, 3·C]`` spikes. Each product is rounded to the spikes' dtype where
``torch.matmul`` rounds it: ``Kᵀ V``, then the product with Q; in the backward ``Qᵀ dA``, ``dA (s·KᵀV)ᵀ``,
``V dKVᵀ`` and ``K dKV``. float16 operands multiply on tensor cores with float32 sums, as matmul's
do: the product of two float16 numbers is exact in float32, and the forward's products are sums of
spikes, exact in any order. Other operands multiply in float32 (IEEE, not TF32, which would round
them): bfloat16 ones too, whose products are as exact, because Triton's CPU interpreter, where the
tests check these kernels without a GPU, cannot multiply bfloat16 tiles. The gradient of Q, K and V is
written as one ``[B, L, 3·C]`` tensor, laid out as the spikes are.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["forward", "backward", "fits"]

WIDEST_TOKENS = 256  # tokens one program holds (a tile of L x head_dim per operand)
WIDEST_HEAD = 128


@triton.jit
def _dot(a, b):
    """``a @ b`` in float32: float16 tiles on tensor cores, others in IEEE float32."""
    if a.dtype == tl.float16 and b.dtype == tl.float16:
        return tl.dot(a, b, out_dtype=tl.float32)
    return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@triton.jit
def _scaled(product, scale, dtype: tl.constexpr):
    """``scale`` times a product rounded to ``dtype`` (matmul's output), rounded to ``dtype`` again."""
    return (product.to(dtype).to(tl.float32) * scale).to(dtype)


@triton.jit
def _tiles(tokens, width, head_dim, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """(offsets of a sequence's Q tile in the ``[B, L, 3·C]`` spikes, offsets of its tile in ``[B, L, C]``,
    mask); K's and V's tiles are C and 2·C past Q's."""
    sequence = tl.program_id(0) // (width // head_dim)
    head = tl.program_id(0) % (width // head_dim)
    token = tl.arange(0, BLOCK_L)
    lane = tl.arange(0, BLOCK_D)
    mask = (token < tokens)[:, None] & (lane < head_dim)[None, :]
    base = sequence.to(tl.int64) * tokens
    spikes = (base + token[:, None]) * (3 * width) + head * head_dim + lane[None, :]
    out = (base + token[:, None]) * width + head * head_dim + lane[None, :]
    return spikes, out, mask


@triton.jit
def _load(qkv_ptr, at, mask, width):
    q = tl.load(qkv_ptr + at, mask=mask, other=0.0)
    k = tl.load(qkv_ptr + at + width, mask=mask, other=0.0)
    v = tl.load(qkv_ptr + at + 2 * width, mask=mask, other=0.0)
    return q, k, v


@triton.jit
def _forward(qkv_ptr, out_ptr, tokens, width, head_dim, scale, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    dtype: tl.constexpr = out_ptr.dtype.element_ty
    at, out_at, mask = _tiles(tokens, width, head_dim, BLOCK_L, BLOCK_D)
    q, k, v = _load(qkv_ptr, at, mask, width)
    kv = _scaled(_dot(tl.trans(k), v), scale, dtype)  # [D, D]: s·KᵀV
    tl.store(out_ptr + out_at, _dot(q, kv).to(dtype), mask=mask)


@triton.jit
def _backward(qkv_ptr, grad_ptr, grad_qkv_ptr, tokens, width, head_dim, scale,
              BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    dtype: tl.constexpr = grad_qkv_ptr.dtype.element_ty
    at, out_at, mask = _tiles(tokens, width, head_dim, BLOCK_L, BLOCK_D)
    q, k, v = _load(qkv_ptr, at, mask, width)
    grad = tl.load(grad_ptr + out_at, mask=mask, other=0.0)  # dA, [L, D]
    kv = _scaled(_dot(tl.trans(k), v), scale, dtype)
    grad_kv = _scaled(_dot(tl.trans(q), grad), scale, dtype)  # d(KᵀV) = s·(Qᵀ dA)
    tl.store(grad_qkv_ptr + at, _dot(grad, tl.trans(kv)).to(dtype), mask=mask)
    tl.store(grad_qkv_ptr + at + width, _dot(v, tl.trans(grad_kv)).to(dtype), mask=mask)
    tl.store(grad_qkv_ptr + at + 2 * width, _dot(k, grad_kv).to(dtype), mask=mask)


def _blocks(tokens: int, head_dim: int):
    # tl.dot takes tiles of at least 16 in every dimension
    return max(16, triton.next_power_of_2(tokens)), max(16, triton.next_power_of_2(head_dim))


def fits(tokens: int, head_dim: int) -> bool:
    """Whether one program's tiles hold ``tokens`` tokens of ``head_dim`` lanes."""
    block_l, block_d = _blocks(tokens, head_dim)
    return block_l <= WIDEST_TOKENS and block_d <= WIDEST_HEAD


def _launch(kernel, qkv: torch.Tensor, heads: int, scale: float, *tensors):
    """``kernel`` over one program per (sequence, head) of ``qkv`` ``[B, L, 3·C]``, with ``tensors`` after
    ``qkv``."""
    batch, tokens, width3 = qkv.shape
    width = width3 // 3
    head_dim = width // heads
    block_l, block_d = _blocks(tokens, head_dim)
    # (more threads for the wider tiles, to hold them in registers)
    kernel[(batch * heads,)](qkv, *tensors, tokens, width, head_dim, scale,
                             BLOCK_L=block_l, BLOCK_D=block_d, num_warps=4 if block_l * block_d <= 4096 else 8)


def forward(qkv: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """``qkv``: ``[B, L, 3·C]`` dense spikes (q, k, v, each head's ``C / heads`` channels together) ->
    ``[B, L, C]``, each head's ``Q (s·KᵀV)`` in its channels."""
    batch, tokens, width3 = qkv.shape
    out = torch.empty(batch, tokens, width3 // 3, dtype=qkv.dtype, device=qkv.device)
    _launch(_forward, qkv, heads, scale, out)
    return out


def backward(qkv: torch.Tensor, grad: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """The gradient of :func:`forward`'s ``qkv`` from its output's gradient ``grad`` (``[B, L, C]``, dense)."""
    grad_qkv = torch.empty_like(qkv)
    _launch(_backward, qkv, heads, scale, grad, grad_qkv)
    return grad_qkv
