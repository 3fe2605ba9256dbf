"""Max-pooling kernels that record, per output, the position of the maximum inside its window as one
byte (``kh * kernel_w + kw``) instead of PyTorch's int64 index into the input plane. Imported only
where Triton runs the tensors (CUDA, or the CPU interpreter in tests);
:mod:`flashspike.memory.pooling` uses them.

They compute what PyTorch's ``max_pool2d_with_indices`` and its backward compute (dilation 1): the
maximum, the first position holding it in row-major window order (the last NaN, where there is one),
and a gradient that gathers, for each input element, the outputs whose maximum it is, in ascending
output order and in float32, then casts once.

Each program works on a tile of ``[rows, lanes]`` elements whose lanes are adjacent in memory: the
channels of a channels_last tensor (rows are its pixels), the columns of a contiguous one (rows are
its image rows). A tile's coordinates then take a few integer divisions per row rather than several
per element, which on a GPU cost more than the memory traffic itself, and its loads along the lanes
are contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["forward", "backward", "channels_last"]

# Elements per program: the forward's tiles are smaller (at the stem of a 224 x 224 ResNet on an H100, with
# 64 channels of float16: 0.130 ms with 1024, 0.218 ms with 2048, where the backward takes 0.19 ms
# with either; measured with triton.testing.do_bench over tiles of 1024 to 8192 and 2 to 16 warps).
FORWARD_TILE = 1024
BACKWARD_TILE = 2048
WIDEST_LANES = 64  # lanes per tile at most; the rest of the tile is rows
LARGEST_INT32 = 2 ** 31 - 1


@triton.jit
def _tile(rows, lanes, C, H, W, CHANNELS_LAST: tl.constexpr, WIDE: tl.constexpr,
          BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """The coordinates (n, c, h, w) of this program's tile of an [N, C, H, W] tensor walked as ``rows``
    x ``lanes``, each broadcastable to the tile, and the tile's live elements."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    if WIDE:  # element offsets past 2**31 - 1
        r = r.to(tl.int64)
    live = (r < rows)[:, None] & (k < lanes)[None, :]
    if CHANNELS_LAST:  # rows are the pixels (n, h, w), lanes the channels
        w = r % W
        h = (r // W) % H
        n = r // (W * H)
        return n[:, None], k[None, :], h[:, None], w[:, None], live
    else:  # rows are the image rows (n, c, h), lanes the columns
        h = r % H
        c = (r // H) % C
        n = r // (H * C)
        return n[:, None], c[:, None], h[:, None], k[None, :], live


@triton.jit
def _max_pool_positions_forward(x_ptr, y_ptr, pos_ptr, rows, lanes, C, H, W, OH, OW,
             sxn, sxc, sxh, sxw, syn, syc, syh, syw,
             KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
             PH: tl.constexpr, PW: tl.constexpr, CHANNELS_LAST: tl.constexpr, WIDE: tl.constexpr,
             BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    n, c, oh, ow, live = _tile(rows, lanes, C, OH, OW, CHANNELS_LAST, WIDE, BLOCK_R, BLOCK_K)
    top = oh * SH - PH
    left = ow * SW - PW
    # The first position inside the input: where PyTorch's index starts before any comparison.
    first_h = tl.maximum(top, 0) - top
    first_w = tl.maximum(left, 0) - left
    best = tl.full((BLOCK_R, BLOCK_K), float("-inf"), tl.float32)
    position = tl.zeros((BLOCK_R, BLOCK_K), tl.int32) + (first_h * KW + first_w).to(tl.int32)
    base = x_ptr + n * sxn + c * sxc
    for kh in tl.static_range(KH):
        for kw in tl.static_range(KW):
            ih = top + kh
            iw = left + kw
            inside = live & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            value = tl.load(base + ih * sxh + iw * sxw, mask=inside, other=float("-inf")).to(tl.float32)
            take = inside & ((value > best) | (value != value))
            best = tl.where(take, value, best)
            position = tl.where(take, kh * KW + kw, position)
    out = n * syn + c * syc + oh * syh + ow * syw
    tl.store(y_ptr + out, best.to(y_ptr.dtype.element_ty), mask=live)
    tl.store(pos_ptr + out, position.to(tl.uint8), mask=live)


@triton.jit
def _max_pool_positions_backward(g_ptr, pos_ptr, dx_ptr, rows, lanes, C, H, W, OH, OW,
              sgn, sgc, sgh, sgw, spn, spc, sph, spw, sdn, sdc, sdh, sdw,
              KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
              PH: tl.constexpr, PW: tl.constexpr, CHANNELS_LAST: tl.constexpr, WIDE: tl.constexpr,
              BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    n, c, ih, iw, live = _tile(rows, lanes, C, H, W, CHANNELS_LAST, WIDE, BLOCK_R, BLOCK_K)
    # Outputs whose window covers (ih, iw): oh in [ceil((ih + PH - KH + 1) / SH), (ih + PH) // SH].
    last_h = (ih + PH) // SH
    last_w = (iw + PW) // SW
    acc = tl.zeros((BLOCK_R, BLOCK_K), tl.float32)
    COVER_H: tl.constexpr = (KH + SH - 1) // SH  # windows a row can lie in
    COVER_W: tl.constexpr = (KW + SW - 1) // SW
    for dh in tl.static_range(COVER_H):
        for dw in tl.static_range(COVER_W):
            # ascending output order, as PyTorch adds them
            oh = last_h - (COVER_H - 1) + dh
            ow = last_w - (COVER_W - 1) + dw
            kh = ih + PH - oh * SH
            kw = iw + PW - ow * SW
            covers = live & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW) & (kh < KH) & (kw < KW)
            position = tl.load(pos_ptr + n * spn + c * spc + oh * sph + ow * spw, mask=covers, other=255)
            chosen = covers & (position.to(tl.int32) == kh * KW + kw)
            acc += tl.load(g_ptr + n * sgn + c * sgc + oh * sgh + ow * sgw, mask=chosen, other=0.0).to(tl.float32)
    tl.store(dx_ptr + n * sdn + c * sdc + ih * sdh + iw * sdw, acc.to(dx_ptr.dtype.element_ty), mask=live)


def channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is laid out channels_last (and not also contiguous, as a tensor with one channel
    or one pixel can be)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _new(shape, dtype, device, channels_last: bool) -> torch.Tensor:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)


def out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _walk(tile: int, t: torch.Tensor, *others: torch.Tensor):
    """(rows, lanes, grid, constants) of the kernels' walk over ``t`` ``[N, C, H, W]`` in tiles of ``tile``
    elements (see the module's text); ``others`` are the launch's other tensors, which decide with ``t``
    whether element offsets need 64 bits."""
    n, c, h, w = t.shape
    last = channels_last(t)
    rows, lanes = (n * h * w, c) if last else (n * c * h, w)
    block_k = min(triton.next_power_of_2(lanes), WIDEST_LANES)
    block_r = tile // block_k
    reach = max(sum((size - 1) * stride for size, stride in zip(x.shape, x.stride())) for x in (t, *others))
    grid = (triton.cdiv(rows, block_r), triton.cdiv(lanes, block_k))
    return rows, lanes, grid, dict(CHANNELS_LAST=last, WIDE=reach > LARGEST_INT32, BLOCK_R=block_r, BLOCK_K=block_k)


def forward(x: torch.Tensor, kernel: tuple, stride: tuple, padding: tuple):
    """(y, positions) of a max-pooling of ``x`` ``[N, C, H, W]`` (any strides): y in x's dtype and memory
    format, positions uint8 laid out like y."""
    n, c, h, w = x.shape
    oh, ow = out_size(h, kernel[0], stride[0], padding[0]), out_size(w, kernel[1], stride[1], padding[1])
    y = _new((n, c, oh, ow), x.dtype, x.device, channels_last(x))
    positions = torch.empty_strided(y.shape, y.stride(), dtype=torch.uint8, device=x.device)
    if y.numel():
        rows, lanes, grid, walk = _walk(FORWARD_TILE, y, x)
        _max_pool_positions_forward[grid](
            x, y, positions, rows, lanes, c, h, w, oh, ow, *x.stride(), *y.stride(),
            KH=kernel[0], KW=kernel[1], SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1], **walk)
    return y, positions


def backward(grad: torch.Tensor, positions: torch.Tensor, input_shape, dtype: torch.dtype, input_channels_last: bool,
             kernel: tuple, stride: tuple, padding: tuple) -> torch.Tensor:
    """The gradient of the input (``input_shape``, ``dtype``, channels_last or contiguous as the input
    was) from the outputs' gradient ``grad`` (any strides) and the positions :func:`forward` recorded."""
    n, c, h, w = input_shape
    grad_x = _new(input_shape, dtype, grad.device, input_channels_last)
    if grad_x.numel():
        rows, lanes, grid, walk = _walk(BACKWARD_TILE, grad_x, grad, positions)
        _max_pool_positions_backward[grid](
            grad, positions, grad_x, rows, lanes, c, h, w, grad.shape[2], grad.shape[3], *grad.stride(),
            *positions.stride(), *grad_x.stride(), KH=kernel[0], KW=kernel[1], SH=stride[0], SW=stride[1],
            PH=padding[0], PW=padding[1], **walk)
    return grad_x
