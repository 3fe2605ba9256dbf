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

:func:`moments` gives the batch's mean and ``1/sqrt(var + eps)`` per channel of a tensor whose channels
are adjacent in memory (channels last, or ``[N, C]``), where PyTorch's own statistics kernel is several
times slower than reading the tensor: programs reduce blocks of rows to each channel's mean and sum of
squared deviations (exact within a block, merged by Chan's update), and one more launch merges the
blocks' results.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["normalize", "affine_terms", "moments"]

ELEMENTS_PER_PROGRAM = 4096
WIDEST_ROW_BLOCK = 1024
MOMENT_CHANNELS = 64  # channels per program of the statistics
MOMENT_PROGRAMS = 1024  # programs the statistics spread a tensor over, at most (a GPU's SMs take several each)


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


@triton.jit
def _partial_moments(x_ptr, mean_ptr, m2_ptr, rows, channels, rows_per_program,
                     BLOCK_ROWS: tl.constexpr, BLOCK_CHANNELS: tl.constexpr):
    part = tl.program_id(0)
    channel = tl.program_id(1) * BLOCK_CHANNELS + tl.arange(0, BLOCK_CHANNELS)
    live_channel = channel < channels
    first = part.to(tl.int64) * rows_per_program
    count = tl.zeros((BLOCK_CHANNELS,), tl.float32)
    mean = tl.zeros((BLOCK_CHANNELS,), tl.float32)
    m2 = tl.zeros((BLOCK_CHANNELS,), tl.float32)
    for start in range(0, rows_per_program, BLOCK_ROWS):  # rows_per_program: a multiple of BLOCK_ROWS
        row = first + start + tl.arange(0, BLOCK_ROWS)
        live_row = row < rows
        mask = live_row[:, None] & live_channel[None, :]
        x = tl.load(x_ptr + row[:, None] * channels + channel[None, :], mask=mask, other=0.0).to(tl.float32)
        n = tl.sum(live_row.to(tl.float32), axis=0)
        block_mean = tl.sum(x, axis=0) / tl.maximum(n, 1.0)
        deviation = tl.where(mask, x - block_mean[None, :], 0.0)
        block_m2 = tl.sum(deviation * deviation, axis=0)
        total = tl.maximum(count + n, 1.0)
        delta = block_mean - mean
        mean += delta * (n / total)
        m2 += block_m2 + delta * delta * (count * n / total)
        count += n
    tl.store(mean_ptr + part * channels + channel, mean, mask=live_channel)
    tl.store(m2_ptr + part * channels + channel, m2, mask=live_channel)


@triton.jit
def _merge_moments(part_mean_ptr, part_m2_ptr, mean_ptr, invstd_ptr, parts, rows, rows_per_program, channels, eps,
                   BLOCK: tl.constexpr):
    channel = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = channel < channels
    count = tl.zeros((BLOCK,), tl.float32)
    mean = tl.zeros((BLOCK,), tl.float32)
    m2 = tl.zeros((BLOCK,), tl.float32)
    for part in range(parts):
        n = tl.minimum(rows - part * rows_per_program, rows_per_program).to(tl.float32)
        part_mean = tl.load(part_mean_ptr + part * channels + channel, mask=live, other=0.0)
        part_m2 = tl.load(part_m2_ptr + part * channels + channel, mask=live, other=0.0)
        total = count + n
        delta = part_mean - mean
        mean += delta * (n / total)
        m2 += part_m2 + delta * delta * (count * n / total)
        count = total
    tl.store(mean_ptr + channel, mean, mask=live)
    tl.store(invstd_ptr + channel, 1.0 / tl.sqrt(m2 / count + eps), mask=live)


def moments(x: torch.Tensor, eps: float):
    """(mean, 1/sqrt(var + eps)) per channel, float32, var biased, of ``x`` ``[N, C, *]`` dense with its
    channels adjacent in memory (``x.stride(1) == 1``) and not empty."""
    channels = x.shape[1]
    rows = x.numel() // channels
    block_channels = min(triton.next_power_of_2(channels), MOMENT_CHANNELS)
    block_rows = ELEMENTS_PER_PROGRAM // block_channels
    channel_blocks = triton.cdiv(channels, block_channels)
    parts = max(1, min(triton.cdiv(rows, block_rows), MOMENT_PROGRAMS // channel_blocks))
    rows_per_program = triton.cdiv(triton.cdiv(rows, parts), block_rows) * block_rows
    parts = triton.cdiv(rows, rows_per_program)
    part_mean = torch.empty(parts, channels, dtype=torch.float32, device=x.device)
    part_m2 = torch.empty_like(part_mean)
    _partial_moments[(parts, channel_blocks)](x, part_mean, part_m2, rows, channels, rows_per_program,
                                              BLOCK_ROWS=block_rows, BLOCK_CHANNELS=block_channels)
    mean = torch.empty(channels, dtype=torch.float32, device=x.device)
    invstd = torch.empty_like(mean)
    block = min(triton.next_power_of_2(channels), 256)
    _merge_moments[(triton.cdiv(channels, block),)](part_mean, part_m2, mean, invstd, parts, rows, rows_per_program,
                                                    channels, eps, BLOCK=block)
    return mean, invstd
