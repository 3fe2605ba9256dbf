"""Max-pooling kernels that record, per output, the position of the maximum inside its window as one
byte (``kh * kernel_w + kw``) instead of PyTorch's int64 index into the input plane. Imported only
where Triton runs the tensors (CUDA, or the CPU interpreter in tests);
:mod:`flashspike.memory.pooling` uses them.

They compute what PyTorch's ``max_pool2d_with_indices`` and its backward compute (dilation 1): the
maximum, the first position holding it in row-major window order (the last NaN, where there is one),
and a gradient that gathers, for each input element, the outputs whose maximum it is, in ascending
output order and in float32, then casts once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["forward", "backward", "channels_last"]

BLOCK = 256  # output (forward) or input (backward) elements per program


@triton.jit
def _coordinates(index, C, H, W, CHANNELS_LAST: tl.constexpr):
    """(n, c, h, w) of element ``index`` of an [N, C, H, W] tensor counted in its memory order: a
    program's lanes walk the channels of channels_last tensors, which are adjacent in memory."""
    if CHANNELS_LAST:
        c = index % C
        w = (index // C) % W
        h = (index // (C * W)) % H
        n = index // (C * W * H)
    else:
        w = index % W
        h = (index // W) % H
        c = (index // (W * H)) % C
        n = index // (W * H * C)
    return n, c, h, w


@triton.jit
def _max_pool_positions_forward(x_ptr, y_ptr, pos_ptr, total, C, H, W, OH, OW,
             sxn, sxc, sxh, sxw, syn, syc, syh, syw,
             KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
             PH: tl.constexpr, PW: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = index < total
    n, c, oh, ow = _coordinates(index, C, OH, OW, CHANNELS_LAST)
    top = oh * SH - PH
    left = ow * SW - PW
    # The first position inside the input: where PyTorch's index starts before any comparison.
    first_h = tl.maximum(top, 0) - top
    first_w = tl.maximum(left, 0) - left
    best = tl.full((BLOCK,), float("-inf"), tl.float32)
    position = (first_h * KW + first_w).to(tl.int32)
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
def _max_pool_positions_backward(g_ptr, pos_ptr, dx_ptr, total, C, H, W, OH, OW,
              sgn, sgc, sgh, sgw, sdn, sdc, sdh, sdw,
              KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
              PH: tl.constexpr, PW: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = index < total
    n, c, ih, iw = _coordinates(index, C, H, W, CHANNELS_LAST)
    # Outputs whose window covers (ih, iw): oh in [ceil((ih + PH - KH + 1) / SH), (ih + PH) // SH].
    last_h = (ih + PH) // SH
    last_w = (iw + PW) // SW
    acc = tl.zeros((BLOCK,), tl.float32)
    base_g = n * sgn + c * sgc
    COVER_H: tl.constexpr = (KH + SH - 1) // SH  # windows a row can lie in
    COVER_W: tl.constexpr = (KW + SW - 1) // SW
    for dh in tl.static_range(COVER_H):
        for dw in tl.static_range(COVER_W):
            # ascending output order, as PyTorch adds them
            oh = last_h - (COVER_H - 1) + dh
            ow = last_w - (COVER_W - 1) + dw
            kh = ih + PH - oh * SH
            kw = iw + PW - ow * SW
            covers = live & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW) & (kh >= 0) & (kh < KH) \
                & (kw >= 0) & (kw < KW)
            at = base_g + oh * sgh + ow * sgw
            position = tl.load(pos_ptr + at, mask=covers, other=255).to(tl.int32)
            grad = tl.load(g_ptr + at, mask=covers & (position == kh * KW + kw), other=0.0).to(tl.float32)
            acc += grad
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


def forward(x: torch.Tensor, kernel: tuple, stride: tuple, padding: tuple):
    """(y, positions) of a max-pooling of ``x`` ``[N, C, H, W]`` (any strides): y in x's dtype and memory
    format, positions uint8 laid out like y."""
    n, c, h, w = x.shape
    oh, ow = out_size(h, kernel[0], stride[0], padding[0]), out_size(w, kernel[1], stride[1], padding[1])
    y = _new((n, c, oh, ow), x.dtype, x.device, channels_last(x))
    positions = torch.empty_strided(y.shape, y.stride(), dtype=torch.uint8, device=x.device)
    total = y.numel()
    if total:
        _max_pool_positions_forward[(triton.cdiv(total, BLOCK),)](
            x, y, positions, total, c, h, w, oh, ow, *x.stride(), *y.stride(),
            KH=kernel[0], KW=kernel[1], SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1],
            CHANNELS_LAST=channels_last(y), BLOCK=BLOCK)
    return y, positions


def backward(grad: torch.Tensor, positions: torch.Tensor, input_shape, dtype: torch.dtype, input_channels_last: bool,
             kernel: tuple, stride: tuple, padding: tuple) -> torch.Tensor:
    """The gradient of the input (``input_shape``, ``dtype``, channels_last or contiguous as the input
    was) from the outputs' gradient ``grad`` and the positions :func:`forward` recorded."""
    if grad.stride() != positions.stride():
        grad = torch.empty_strided(positions.shape, positions.stride(), dtype=grad.dtype,
                                   device=grad.device).copy_(grad)
    n, c, h, w = input_shape
    grad_x = _new(input_shape, dtype, grad.device, input_channels_last)
    total = grad_x.numel()
    if total:
        _max_pool_positions_backward[(triton.cdiv(total, BLOCK),)](
            grad, positions, grad_x, total, c, h, w, grad.shape[2], grad.shape[3], *grad.stride(),
            *grad_x.stride(), KH=kernel[0], KW=kernel[1], SH=stride[0], SW=stride[1], PH=padding[0],
            PW=padding[1], CHANNELS_LAST=channels_last(grad_x), BLOCK=BLOCK)
    return grad_x
