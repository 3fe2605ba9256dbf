"""The normalization of :mod:`flashspike.memory.batchnorm_recompute` as one Triton kernel: ``x * scale[c]
+ shift[c]`` per element, one fused multiply-add in float32 rounded once to x's dtype, which is what
the neuron kernels compute again when they read ``x`` for H (:meth:`KernelSet.recompute_h`). Imported
only where Triton runs the tensors (CUDA, or the CPU interpreter in tests).

:func:`affine_terms` turns the batch's statistics into each channel's scale and shift and updates the
running statistics, in one launch (a step's tiny per-channel operations are otherwise a dozen
launches per BatchNorm, each a few microseconds of a captured step).

A dense ``[N, C, *]`` tensor is, in memory, ``[outer, C, inner]`` with ``inner`` the channel's stride. The
kernel walks it as a table of rows whose channel it finds without dividing per element: with
``inner`` 1 (channels last) the columns are the channels; otherwise each row is one channel's plane
of ``inner`` elements, and its channel is the row's index modulo C, one division per row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["normalize", "affine_terms"]

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


@triton.jit
def _affine_terms(mean_ptr, invstd_ptr, weight_ptr, bias_ptr, scale_ptr, shift_ptr, running_mean_ptr,
                  running_var_ptr, channels, eps, factor, unbias, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                  UPDATE: tl.constexpr, BLOCK: tl.constexpr):
    channel = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = channel < channels
    mean = tl.load(mean_ptr + channel, mask=mask, other=0.0)
    invstd = tl.load(invstd_ptr + channel, mask=mask, other=1.0)
    scale = invstd
    if HAS_WEIGHT:
        scale = invstd * tl.load(weight_ptr + channel, mask=mask, other=0.0).to(tl.float32)
    shift = -mean * scale
    if HAS_BIAS:
        shift = tl.load(bias_ptr + channel, mask=mask, other=0.0).to(tl.float32) - mean * scale
    tl.store(scale_ptr + channel, scale, mask=mask)
    tl.store(shift_ptr + channel, shift, mask=mask)
    if UPDATE:  # nn.BatchNorm's exponential average; the variance from invstd, made unbiased
        var = 1.0 / (invstd * invstd) - eps
        running_mean = tl.load(running_mean_ptr + channel, mask=mask, other=0.0).to(tl.float32)
        running_var = tl.load(running_var_ptr + channel, mask=mask, other=0.0).to(tl.float32)
        running_mean = running_mean * (1.0 - factor) + mean * factor
        running_var = running_var * (1.0 - factor) + var * unbias * factor
        tl.store(running_mean_ptr + channel, running_mean.to(running_mean_ptr.dtype.element_ty), mask=mask)
        tl.store(running_var_ptr + channel, running_var.to(running_var_ptr.dtype.element_ty), mask=mask)


def affine_terms(mean, invstd, weight, bias, running_mean, running_var, factor: float, eps: float, count: int):
    """(scale, shift), float32 ``[C]``, from the batch's ``mean`` and ``invstd`` (float32) and the
    layer's ``weight`` and ``bias`` (or None); with running statistics (not None), update them in
    place by ``factor`` (the variance unbiased over ``count`` values per channel)."""
    channels = mean.numel()
    scale, shift = torch.empty_like(mean), torch.empty_like(mean)
    block = min(triton.next_power_of_2(channels), 1024)
    update = running_mean is not None
    _affine_terms[(triton.cdiv(channels, block),)](
        mean, invstd, weight, bias, scale, shift, running_mean, running_var, channels, eps, factor,
        count / max(count - 1, 1), HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, UPDATE=update,
        BLOCK=block)
    return scale, shift
