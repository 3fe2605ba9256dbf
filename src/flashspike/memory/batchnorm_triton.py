"""The normalization of :mod:`flashspike.memory.batchnorm_recompute` as one Triton kernel: ``x * scale[c]
+ shift[c]`` per element, one fused multiply-add in float32 rounded once to x's dtype, which is what
the neuron kernels compute again when they read ``x`` for H (:meth:`KernelSet.recompute_h`). Imported
only where Triton runs the tensors (CUDA, or the CPU interpreter in tests).

A dense ``[N, C, *]`` tensor is, in memory, ``[outer, C, inner]`` with ``inner`` the channel's stride. The
kernel walks it as a table of rows whose channel it finds without dividing per element: with
``inner`` 1 (channels last) the columns are the channels; otherwise each row is one channel's plane
of ``inner`` elements, and its channel is the row's index modulo C, one division per row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["normalize"]

ELEMENTS_PER_PROGRAM = 4096
WIDEST_ROW_BLOCK = 1024


@triton.jit
def _normalize(x_ptr, y_ptr, scale_ptr, shift_ptr, rows, columns, channels,
               CHANNEL_IS_COLUMN: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLUMNS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    column = tl.program_id(1) * BLOCK_COLUMNS + tl.arange(0, BLOCK_COLUMNS)
    mask = (row < rows)[:, None] & (column < columns)[None, :]
    if CHANNEL_IS_COLUMN:
        channel = column[None, :]
    else:
        channel = (row % channels)[:, None]
    scale = tl.load(scale_ptr + channel, mask=mask, other=0.0)
    shift = tl.load(shift_ptr + channel, mask=mask, other=0.0)
    index = row[:, None] * columns + column[None, :]
    x = tl.load(x_ptr + index, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + index, tl.fma(x, scale, shift).to(y_ptr.dtype.element_ty), mask=mask)


def normalize(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``round(x * scale[c] + shift[c])`` for ``x`` of shape ``[N, C, *]``, dense in any order of its
    dimensions (the output has its strides); ``scale`` and ``shift`` are float32 ``[C]``."""
    y = torch.empty_like(x)
    count, channels, inner = x.numel(), x.shape[1], x.stride(1)
    if not count:
        return y
    if inner == 1:  # [outer, C]
        rows, columns = count // channels, channels
    else:  # [outer * C, inner]
        rows, columns = count // inner, inner
    block_columns = min(triton.next_power_of_2(columns), WIDEST_ROW_BLOCK)
    block_rows = max(1, ELEMENTS_PER_PROGRAM // block_columns)
    grid = (triton.cdiv(rows, block_rows), triton.cdiv(columns, block_columns))
    _normalize[grid](x, y, scale, shift, rows, columns, channels, CHANNEL_IS_COLUMN=inner == 1,
                     BLOCK_ROWS=block_rows, BLOCK_COLUMNS=block_columns)
    return y
