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

:func:`statistics` gives the batch's mean and ``1/sqrt(var + eps)`` per channel of a tensor whose channels
are adjacent in memory (channels last, or ``[N, C]``), where PyTorch's own statistics kernel is several
times slower than reading the tensor: programs reduce blocks of rows to each channel's mean and sum of
squared deviations (Welford's update in each lane, the lanes then merged by Chan's exact update), and
one more launch merges the blocks' results the same way, then computes what :func:`affine_terms` would
from them, in registers. :func:`backward` is the batch normalization's gradient for the same tensors,
its per-channel sums gathered the same way (PyTorch's channels-last backward kernels are slow too).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["normalize", "affine_terms", "statistics", "backward"]

ELEMENTS_PER_PROGRAM = 4096
WIDEST_ROW_BLOCK = 1024
MOMENT_CHANNELS = 64  # channels per program of the statistics
MOMENT_PROGRAMS = 1024  # programs the statistics spread a tensor over, at most (a GPU's SMs take several each)
MERGE_CHANNELS = 8  # channels per program of the merges (a narrow layer's merge still spreads over programs)
MERGE_TILE = 2048  # partial results a merging program loads at once


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


def normalize(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """``round(x * scale[c] + shift[c])`` for ``x`` of shape ``[N, C, *]``, dense in any order of its
    dimensions (the output has its strides: ``out``, or new memory); ``scale`` and ``shift`` are float32
    ``[C]``."""
    y = torch.empty_like(x) if out is None else out
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
def _store_terms(channel, mask, mean, invstd, weight_ptr, bias_ptr, scale_ptr, shift_ptr, running_mean_ptr,
                 running_var_ptr, eps, factor, unbias, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                 UPDATE: tl.constexpr):
    """Store each channel's scale and shift from its float32 ``mean`` and ``invstd``; with ``UPDATE``,
    update the running statistics (what :func:`affine_terms` documents)."""
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


@triton.jit
def _affine_terms(mean_ptr, invstd_ptr, weight_ptr, bias_ptr, scale_ptr, shift_ptr, running_mean_ptr,
                  running_var_ptr, channels, eps, factor, unbias, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                  UPDATE: tl.constexpr, BLOCK: tl.constexpr):
    channel = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = channel < channels
    mean = tl.load(mean_ptr + channel, mask=mask, other=0.0)
    invstd = tl.load(invstd_ptr + channel, mask=mask, other=1.0)
    _store_terms(channel, mask, mean, invstd, weight_ptr, bias_ptr, scale_ptr, shift_ptr, running_mean_ptr,
                 running_var_ptr, eps, factor, unbias, HAS_WEIGHT, HAS_BIAS, UPDATE)


def _unbias(count: int) -> float:
    """The factor that makes a biased variance over ``count`` values unbiased, as nn.BatchNorm's update."""
    return count / max(count - 1, 1)


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
        _unbias(count), HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, UPDATE=update, BLOCK=block)
    return scale, shift


@triton.jit
def _chan_merge(mean_a, m2_a, n_a, mean_b, m2_b, n_b):
    """Two groups' (mean, sum of squared deviations, count) as one group's: Chan's exact update."""
    n = n_a + n_b
    weight_b = tl.where(n > 0, n_b / tl.maximum(n, 1.0), 0.0)
    delta = mean_b - mean_a
    return mean_a + delta * weight_b, m2_a + m2_b + delta * delta * n_a * weight_b, n


@triton.jit
def _partial_moments(x_ptr, mean_ptr, m2_ptr, rows, channels, rows_per_program,
                     BLOCK_ROWS: tl.constexpr, BLOCK_CHANNELS: tl.constexpr):
    # Each lane (a row of the tile, a channel) keeps Welford's running mean and M2 of the rows it reads,
    # elementwise in registers; the lanes merge once, at the end. (Reducing across the tile's rows at
    # every step instead goes through shared memory each time: several times slower than the loads.)
    part = tl.program_id(0)
    channel = tl.program_id(1) * BLOCK_CHANNELS + tl.arange(0, BLOCK_CHANNELS)
    live_channel = channel < channels
    first = part.to(tl.int64) * rows_per_program
    count = tl.zeros((BLOCK_ROWS,), tl.float32)
    mean = tl.zeros((BLOCK_ROWS, BLOCK_CHANNELS), tl.float32)
    m2 = tl.zeros((BLOCK_ROWS, BLOCK_CHANNELS), tl.float32)
    for start in range(0, rows_per_program, BLOCK_ROWS):  # rows_per_program: a multiple of BLOCK_ROWS
        row = first + start + tl.arange(0, BLOCK_ROWS)
        live_row = row < rows
        mask = live_row[:, None] & live_channel[None, :]
        x = tl.load(x_ptr + row[:, None] * channels + channel[None, :], mask=mask, other=0.0).to(tl.float32)
        count += live_row.to(tl.float32)
        delta = tl.where(live_row[:, None], x - mean, 0.0)
        mean += delta * (1.0 / tl.maximum(count, 1.0))[:, None]
        m2 += delta * tl.where(live_row[:, None], x - mean, 0.0)
    lanes = tl.broadcast_to(count[:, None], (BLOCK_ROWS, BLOCK_CHANNELS))
    mean, m2, _ = tl.reduce((mean, m2, lanes), 0, _chan_merge)
    tl.store(mean_ptr + part * channels + channel, mean, mask=live_channel)
    tl.store(m2_ptr + part * channels + channel, m2, mask=live_channel)


@triton.jit
def _part_rows(part, parts, rows, rows_per_program):
    """The rows each of the ``part`` blocks (a vector of block indices) reduced, as float32; 0 past the last."""
    return tl.where(part < parts, tl.minimum(rows - part * rows_per_program, rows_per_program), 0).to(tl.float32)


@triton.jit
def _merge_moments(part_mean_ptr, part_m2_ptr, mean_ptr, invstd_ptr, weight_ptr, bias_ptr, scale_ptr, shift_ptr,
                   running_mean_ptr, running_var_ptr, parts, rows, rows_per_program, channels, eps, factor, unbias,
                   HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, UPDATE: tl.constexpr,
                   BLOCK_PARTS: tl.constexpr, BLOCK: tl.constexpr):
    # Tiles of parts at once (a part after another would be a chain of dependent updates), each lane
    # merging the parts it loads by Chan's update, then the lanes merged once; the affine terms from
    # the results in registers (what _affine_terms computes from them in memory, the same bits).
    channel = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = channel < channels
    mean = tl.zeros((BLOCK_PARTS, BLOCK), tl.float32)
    m2 = tl.zeros((BLOCK_PARTS, BLOCK), tl.float32)
    count = tl.zeros((BLOCK_PARTS, BLOCK), tl.float32)
    for start in range(0, parts, BLOCK_PARTS):
        part = start + tl.arange(0, BLOCK_PARTS)
        mask = (part < parts)[:, None] & live[None, :]
        at = part[:, None] * channels + channel[None, :]
        n = tl.broadcast_to(_part_rows(part, parts, rows, rows_per_program)[:, None], (BLOCK_PARTS, BLOCK))
        mean, m2, count = _chan_merge(mean, m2, count, tl.load(part_mean_ptr + at, mask=mask, other=0.0),
                                      tl.load(part_m2_ptr + at, mask=mask, other=0.0), n)
    mean, m2, _ = tl.reduce((mean, m2, count), 0, _chan_merge)
    invstd = 1.0 / tl.sqrt(m2 / rows + eps)
    tl.store(mean_ptr + channel, mean, mask=live)
    tl.store(invstd_ptr + channel, invstd, mask=live)
    _store_terms(channel, live, mean, invstd, weight_ptr, bias_ptr, scale_ptr, shift_ptr, running_mean_ptr,
                 running_var_ptr, eps, factor, unbias, HAS_WEIGHT, HAS_BIAS, UPDATE)


class _Split:
    """How the per-channel reductions spread ``rows`` x ``channels`` (channels adjacent in memory) over
    programs: ``parts`` blocks of ``rows_per_program`` rows (a multiple of ``block_rows``), each walked
    in ``block_channels`` wide tiles; the per-channel launches then take ``block`` channels each."""

    def __init__(self, x: torch.Tensor):
        self.channels = x.shape[1]
        self.rows = x.numel() // self.channels
        self.block_channels = min(triton.next_power_of_2(self.channels), MOMENT_CHANNELS)
        self.block_rows = ELEMENTS_PER_PROGRAM // self.block_channels
        channel_blocks = triton.cdiv(self.channels, self.block_channels)
        parts = max(1, min(triton.cdiv(self.rows, self.block_rows), MOMENT_PROGRAMS // channel_blocks))
        self.rows_per_program = triton.cdiv(triton.cdiv(self.rows, parts), self.block_rows) * self.block_rows
        self.parts = triton.cdiv(self.rows, self.rows_per_program)
        self.grid = (self.parts, channel_blocks)
        self.block = min(triton.next_power_of_2(self.channels), MERGE_CHANNELS)
        self.block_parts = min(triton.next_power_of_2(self.parts), MERGE_TILE // self.block)
        self.channel_grid = (triton.cdiv(self.channels, self.block),)

    def partials(self, x: torch.Tensor) -> torch.Tensor:
        return torch.empty(self.parts, self.channels, dtype=torch.float32, device=x.device)


def statistics(x: torch.Tensor, eps: float, weight=None, bias=None, running_mean=None, running_var=None,
               factor: float = 0.0):
    """(mean, 1/sqrt(var + eps), scale, shift) per channel, float32, var biased, of ``x`` ``[N, C, *]`` dense
    with its channels adjacent in memory (``x.stride(1) == 1``) and not empty: the statistics, and the
    affine terms and running-statistics update of :func:`affine_terms` computed from them in the
    statistics' last launch (the same values as the two calls, one launch fewer)."""
    split = _Split(x)
    part_mean, part_m2 = split.partials(x), split.partials(x)
    _partial_moments[split.grid](x, part_mean, part_m2, split.rows, split.channels, split.rows_per_program,
                                 BLOCK_ROWS=split.block_rows, BLOCK_CHANNELS=split.block_channels)
    # (two storages: the batch norm's backward keeps the statistics, a neuron after it the terms)
    mean, invstd = torch.empty(2, split.channels, dtype=torch.float32, device=x.device)
    scale, shift = torch.empty(2, split.channels, dtype=torch.float32, device=x.device)
    _merge_moments[split.channel_grid](part_mean, part_m2, mean, invstd, weight, bias, scale, shift, running_mean,
                                       running_var, split.parts, split.rows, split.rows_per_program, split.channels,
                                       eps, factor, _unbias(split.rows), HAS_WEIGHT=weight is not None,
                                       HAS_BIAS=bias is not None, UPDATE=running_mean is not None,
                                       BLOCK_PARTS=split.block_parts, BLOCK=split.block)
    return mean, invstd, scale, shift


@triton.jit
def _partial_gradient_sums(dy_ptr, x_ptr, mean_ptr, sum_dy_ptr, sum_dy_xmu_ptr, rows, channels, rows_per_program,
                           BLOCK_ROWS: tl.constexpr, BLOCK_CHANNELS: tl.constexpr):
    part = tl.program_id(0)
    channel = tl.program_id(1) * BLOCK_CHANNELS + tl.arange(0, BLOCK_CHANNELS)
    live_channel = channel < channels
    mean = tl.load(mean_ptr + channel, mask=live_channel, other=0.0)
    first = part.to(tl.int64) * rows_per_program
    sum_dy = tl.zeros((BLOCK_ROWS, BLOCK_CHANNELS), tl.float32)
    sum_dy_xmu = tl.zeros((BLOCK_ROWS, BLOCK_CHANNELS), tl.float32)
    for start in range(0, rows_per_program, BLOCK_ROWS):
        row = first + start + tl.arange(0, BLOCK_ROWS)
        mask = (row < rows)[:, None] & live_channel[None, :]
        at = row[:, None] * channels + channel[None, :]
        dy = tl.load(dy_ptr + at, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32)
        sum_dy += dy
        sum_dy_xmu += dy * (x - mean[None, :])
    tl.store(sum_dy_ptr + part * channels + channel, tl.sum(sum_dy, axis=0), mask=live_channel)
    tl.store(sum_dy_xmu_ptr + part * channels + channel, tl.sum(sum_dy_xmu, axis=0), mask=live_channel)


@triton.jit
def _gradient_terms(sum_dy_ptr, sum_dy_xmu_ptr, invstd_ptr, weight_ptr, a_ptr, mean_dy_ptr, k_ptr,
                    grad_weight_ptr, grad_bias_ptr, parts, channels, count,
                    HAS_WEIGHT: tl.constexpr, WANT_WEIGHT: tl.constexpr, WANT_BIAS: tl.constexpr,
                    BLOCK_PARTS: tl.constexpr, BLOCK: tl.constexpr):
    channel = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = channel < channels
    sum_dy = tl.zeros((BLOCK_PARTS, BLOCK), tl.float32)
    sum_dy_xmu = tl.zeros((BLOCK_PARTS, BLOCK), tl.float32)
    for start in range(0, parts, BLOCK_PARTS):  # tiles of parts at once, as the statistics merge them
        part = start + tl.arange(0, BLOCK_PARTS)
        mask = (part < parts)[:, None] & live[None, :]
        at = part[:, None] * channels + channel[None, :]
        sum_dy += tl.load(sum_dy_ptr + at, mask=mask, other=0.0)
        sum_dy_xmu += tl.load(sum_dy_xmu_ptr + at, mask=mask, other=0.0)
    sum_dy = tl.sum(sum_dy, axis=0)
    sum_dy_xmu = tl.sum(sum_dy_xmu, axis=0)
    invstd = tl.load(invstd_ptr + channel, mask=live, other=0.0)
    a = invstd
    if HAS_WEIGHT:
        a = invstd * tl.load(weight_ptr + channel, mask=live, other=0.0).to(tl.float32)
    tl.store(a_ptr + channel, a, mask=live)
    tl.store(mean_dy_ptr + channel, sum_dy / count, mask=live)
    tl.store(k_ptr + channel, a * invstd * invstd * (sum_dy_xmu / count), mask=live)
    if WANT_WEIGHT:
        tl.store(grad_weight_ptr + channel, (sum_dy_xmu * invstd).to(grad_weight_ptr.dtype.element_ty), mask=live)
    if WANT_BIAS:
        tl.store(grad_bias_ptr + channel, sum_dy.to(grad_bias_ptr.dtype.element_ty), mask=live)


@triton.jit
def _grad_input(dy_ptr, x_ptr, dx_ptr, a_ptr, mean_dy_ptr, k_ptr, mean_ptr, rows, channels,
                BLOCK_ROWS: tl.constexpr, BLOCK_CHANNELS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    channel = tl.program_id(1) * BLOCK_CHANNELS + tl.arange(0, BLOCK_CHANNELS)
    live_channel = channel < channels
    mask = (row < rows)[:, None] & live_channel[None, :]
    a = tl.load(a_ptr + channel, mask=live_channel, other=0.0)[None, :]
    mean_dy = tl.load(mean_dy_ptr + channel, mask=live_channel, other=0.0)[None, :]
    k = tl.load(k_ptr + channel, mask=live_channel, other=0.0)[None, :]
    mean = tl.load(mean_ptr + channel, mask=live_channel, other=0.0)[None, :]
    at = row[:, None] * channels + channel[None, :]
    dy = tl.load(dy_ptr + at, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32)
    tl.store(dx_ptr + at, (a * (dy - mean_dy) - k * (x - mean)).to(dx_ptr.dtype.element_ty), mask=mask)


def backward(grad: torch.Tensor, x: torch.Tensor, weight, mean: torch.Tensor, invstd: torch.Tensor,
             needs: tuple):
    """(grad_x, grad_weight, grad_bias) of a batch normalization with the batch's ``mean`` and ``invstd``
    (float32) and ``weight`` (or None), each None unless ``needs`` (three booleans) asks for it; ``x``
    and ``grad`` as :func:`statistics` takes them, with the same strides. The formulas are PyTorch's
    (the gradient through the statistics included), summed in float32 in a fixed order."""
    split = _Split(x)
    sum_dy, sum_dy_xmu = split.partials(x), split.partials(x)
    _partial_gradient_sums[split.grid](grad, x, mean, sum_dy, sum_dy_xmu, split.rows, split.channels,
                                       split.rows_per_program, BLOCK_ROWS=split.block_rows,
                                       BLOCK_CHANNELS=split.block_channels)
    a, mean_dy, k = (torch.empty_like(mean) for _ in range(3))
    want_weight, want_bias = needs[1] and weight is not None, needs[2]
    grad_weight = torch.empty_like(weight) if want_weight else None
    grad_bias = torch.empty(split.channels, dtype=weight.dtype if weight is not None else torch.float32,
                            device=x.device) if want_bias else None
    _gradient_terms[split.channel_grid](sum_dy, sum_dy_xmu, invstd, weight, a, mean_dy, k, grad_weight, grad_bias,
                                        split.parts, split.channels, float(split.rows), HAS_WEIGHT=weight is not None,
                                        WANT_WEIGHT=want_weight, WANT_BIAS=want_bias, BLOCK_PARTS=split.block_parts,
                                        BLOCK=split.block)
    grad_x = None
    if needs[0]:
        grad_x = torch.empty_like(x)
        _grad_input[(triton.cdiv(split.rows, split.block_rows), split.grid[1])](
            grad, x, grad_x, a, mean_dy, k, mean, split.rows, split.channels, BLOCK_ROWS=split.block_rows,
            BLOCK_CHANNELS=split.block_channels)
    return grad_x, grad_weight, grad_bias
