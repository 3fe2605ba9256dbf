"""Max-pooling that keeps one byte per output for its backward pass, instead of an 8-byte index.

``nn.MaxPool2d`` saves, for the backward pass, the int64 index of each output's maximum in the input
plane: 8 bytes per output, four times what a float16 activation takes. In a spiking network the pools
sit on the largest activations (a ResNet's stem, every stage of a VGG), so those indices are a large
share of a training step's memory. :func:`store_pool_indices_in_bytes` switches a network's
``nn.MaxPool2d`` layers to :class:`BytePositionMaxPool2d`, which records instead the position of the
maximum inside its window (``kh * kernel_w + kw``, one uint8) with the Triton kernels of
:mod:`flashspike.memory.pooling_triton`. Outputs and gradients are PyTorch's own: the same maximum,
the same element chosen among equal ones (spike trains have many), the gradient summed in the same
order.

The byte path runs on CUDA with Triton, for 4-d inputs that need a gradient, dilation 1, no
``ceil_mode`` or ``return_indices``, and windows of at most 255 positions; anything else, and code
under ``torch.compile`` (whose own max-pool kernels keep small offsets already), takes
``nn.MaxPool2d``'s forward.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair

from ..functional import switch_module_classes
from ..optional_triton import optional_kernels

__all__ = ["BytePositionMaxPool2d", "store_pool_indices_in_bytes", "is_max_pool_output"]


def _fused_kernels():
    """The byte kernels, or None without Triton (then nn.MaxPool2d's path, which computes the same)."""
    return optional_kernels("flashspike.memory.pooling_triton")


def _runs_fused(x: torch.Tensor) -> bool:
    """Where the byte kernels run: CUDA tensors (tests also send CPU tensors through Triton's
    interpreter by replacing this function)."""
    return x.is_cuda


class MaxPoolBytePositions(torch.autograd.Function):
    """Max-pooling of ``x`` that keeps, for the backward, the byte position of each output's maximum."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding):
        kernels = _fused_kernels()
        y, positions = kernels.forward(x, kernel, stride, padding)
        ctx.save_for_backward(positions)
        ctx.geometry = (x.shape, x.dtype, kernels.channels_last(x), kernel, stride, padding)
        return y

    @staticmethod
    @once_differentiable  # a gradient of the gradient raises instead of silently missing
    def backward(ctx, grad):
        (positions,) = ctx.saved_tensors
        return _fused_kernels().backward(grad, positions, *ctx.geometry), None, None, None


_NODE = MaxPoolBytePositions._backward_cls  # the autograd node of a MaxPoolBytePositions call


def is_max_pool_output(node) -> bool:
    """Whether autograd node ``node`` is this module's max-pooling: its output holds some of its
    input's values and no others (what :mod:`.spike_bits` asks of the layers between a neuron and a
    convolution)."""
    return isinstance(node, _NODE)


class BytePositionMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose backward keeps one byte per output (see the module's text). Same
    arguments, results and printed name."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, stride = _pair(self.kernel_size), _pair(self.stride if self.stride is not None else self.kernel_size)
        padding, dilation = _pair(self.padding), _pair(self.dilation)
        if (x.dim() != 4 or self.ceil_mode or self.return_indices or dilation != (1, 1)
                or kernel[0] * kernel[1] > 255 or not x.is_floating_point() or not x.requires_grad
                or not torch.is_grad_enabled() or torch.compiler.is_compiling() or not _runs_fused(x)
                or _fused_kernels() is None):
            return super().forward(x)
        return MaxPoolBytePositions.apply(x, kernel, stride, padding)

    def _get_name(self):
        return "MaxPool2d"


def store_pool_indices_in_bytes(net: nn.Module, enabled: bool = True) -> int:
    """Switch every ``nn.MaxPool2d`` of ``net`` (that class exactly, not subclasses) to
    :class:`BytePositionMaxPool2d`, or back with ``enabled=False``; returns how many were switched."""
    return switch_module_classes(net, {nn.MaxPool2d: BytePositionMaxPool2d}, enabled)
