"""The bit packing of :mod:`flashspike.spike_bits` as two Triton kernels: one pass each way, with no
temporary tensors. Imported only where Triton runs the tensors (CUDA, or the CPU interpreter in tests).

The layout is :func:`flashspike.spike_bits.pack`'s: element ``i`` of the flat sequence is bit ``i % 8``
(lowest first) of byte ``i // 8``; a last partial byte has its unused bits zero.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["pack", "unpack_into"]

BYTES_PER_PROGRAM = 1024  # eight times as many elements: 8 KiB of float16 read per program


@triton.jit
def _pack(values_ptr, packed_ptr, count, byte_count, BLOCK: tl.constexpr):
    byte = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    bit = tl.arange(0, 8)
    index = byte[:, None] * 8 + bit[None, :]
    value = tl.load(values_ptr + index, mask=index < count, other=0)
    word = tl.sum((value != 0).to(tl.int32) << bit[None, :], axis=1)
    tl.store(packed_ptr + byte, word.to(tl.uint8), mask=byte < byte_count)


@triton.jit
def _unpack(packed_ptr, values_ptr, count, byte_count, BLOCK: tl.constexpr):
    byte = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    word = tl.load(packed_ptr + byte, mask=byte < byte_count, other=0).to(tl.int32)
    bit = tl.arange(0, 8)
    index = byte[:, None] * 8 + bit[None, :]
    value = (word[:, None] >> bit[None, :]) & 1
    # through float32: a direct int-to-bfloat16 conversion is what Triton's CPU interpreter gets wrong
    tl.store(values_ptr + index, value.to(tl.float32).to(values_ptr.dtype.element_ty), mask=index < count)


def _grid(byte_count: int) -> tuple:
    return (triton.cdiv(byte_count, BYTES_PER_PROGRAM),)


def pack(flat: torch.Tensor) -> torch.Tensor:
    """``flat`` (a contiguous 1-d tensor) one bit per element, set where it is nonzero, as uint8."""
    count = flat.numel()
    byte_count = (count + 7) // 8
    packed = torch.empty(byte_count, dtype=torch.uint8, device=flat.device)
    if byte_count:
        _pack[_grid(byte_count)](flat, packed, count, byte_count, BLOCK=BYTES_PER_PROGRAM)
    return packed


def unpack_into(packed: torch.Tensor, flat: torch.Tensor) -> None:
    """Write the bits of ``packed`` into ``flat`` (a contiguous 1-d tensor) as the values 0 and 1."""
    byte_count = packed.numel()
    if byte_count:
        _unpack[_grid(byte_count)](packed, flat, flat.numel(), byte_count, BLOCK=BYTES_PER_PROGRAM)
