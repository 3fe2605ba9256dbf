"""The bit packing of :mod:`flashspike.memory.spike_bits` as two Triton kernels: one pass each way,
with no temporary tensors. Imported only where Triton runs the tensors (CUDA, or the CPU interpreter
in tests).

The layout is :func:`flashspike.memory.spike_bits.pack`'s: with ``width`` bits per element (1, 2, 4
or 8), element ``i`` of the flat sequence is the ``width``-bit field ``i % (8 // width)`` (lowest
first) of byte ``i // (8 // width)``; a last partial byte has its unused bits zero.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["pack", "unpack_into"]

BYTES_PER_PROGRAM = 1024  # up to eight times as many elements: up to 8 KiB of float16 read per program


@triton.jit
def _pack_bits(values_ptr, packed_ptr, count, byte_count, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
    PER_BYTE: tl.constexpr = 8 // WIDTH
    byte = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    field = tl.arange(0, PER_BYTE)
    index = byte[:, None] * PER_BYTE + field[None, :]
    value = tl.load(values_ptr + index, mask=index < count, other=0)
    code = value.to(tl.float32).to(tl.int32) & ((1 << WIDTH) - 1)  # a small non-negative integer
    word = tl.sum(code << (field[None, :] * WIDTH), axis=1)
    tl.store(packed_ptr + byte, word.to(tl.uint8), mask=byte < byte_count)


@triton.jit
def _unpack_bits(packed_ptr, values_ptr, count, byte_count, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
    PER_BYTE: tl.constexpr = 8 // WIDTH
    byte = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    word = tl.load(packed_ptr + byte, mask=byte < byte_count, other=0).to(tl.int32)
    field = tl.arange(0, PER_BYTE)
    index = byte[:, None] * PER_BYTE + field[None, :]
    value = (word[:, None] >> (field[None, :] * WIDTH)) & ((1 << WIDTH) - 1)
    # through float32: a direct int-to-bfloat16 conversion is what Triton's CPU interpreter gets wrong
    tl.store(values_ptr + index, value.to(tl.float32).to(values_ptr.dtype.element_ty), mask=index < count)


def _grid(byte_count: int) -> tuple:
    return (triton.cdiv(byte_count, BYTES_PER_PROGRAM),)


def pack(flat: torch.Tensor, width: int = 1) -> torch.Tensor:
    """``flat`` (a contiguous 1-d tensor of integers 0 .. 2**width - 1) in ``width`` bits per element,
    as uint8."""
    count = flat.numel()
    per_byte = 8 // width
    byte_count = (count + per_byte - 1) // per_byte
    packed = torch.empty(byte_count, dtype=torch.uint8, device=flat.device)
    if byte_count:
        _pack_bits[_grid(byte_count)](flat, packed, count, byte_count, WIDTH=width, BLOCK=BYTES_PER_PROGRAM)
    return packed


def unpack_into(packed: torch.Tensor, flat: torch.Tensor, width: int = 1) -> None:
    """Write the ``width``-bit fields of ``packed`` into ``flat`` (a contiguous 1-d tensor) as values."""
    byte_count = packed.numel()
    if byte_count:
        _unpack_bits[_grid(byte_count)](packed, flat, flat.numel(), byte_count, WIDTH=width, BLOCK=BYTES_PER_PROGRAM)
