"""The first convolution of an image network, reading an RGB image as four channels per pixel.

cuDNN's first-layer kernels for channels-last 16-bit images read four channels per pixel. Given three,
cuDNN pads the image to four itself, in a workspace: a fill and a copy of the whole image before the
forward, and again before the weight gradient. :class:`ImageConv2d` pads the image once instead, as
autocast casts it (the cast writes four channels, the fourth zero), and the weight with a zero input
channel; the padded image is what the backward keeps. In a SEW-ResNet-18 step of 128 images of 224 x
224 on an H100 that spares the 0.18 ms of cuDNN's own padding; what the step keeps of the image
grows from three channels to four.

The outputs are the plain convolution's: the fourth channel adds products with zeros. Elsewhere (on
the CPU, in float32, a contiguous image, another number of channels, grouped convolutions, a padding
mode other than zeros, or code being compiled) the layer is ``nn.Conv2d`` itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import autocast_dtype

__all__ = ["ImageConv2d", "PadsImageChannels", "image_conv_class", "register_image_conv"]

IMAGE_CHANNELS = 3  # the channels of the images padded (RGB)
READ_CHANNELS = 4  # the channels per pixel that cuDNN's first-layer kernels read
_SIXTEEN_BITS = (torch.float16, torch.bfloat16)


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype the convolution runs in: autocast's where autocast is on, else the operands' own (None
    where they differ, which the plain convolution refuses)."""
    return autocast_dtype(x) or (x.dtype if weight.dtype == x.dtype else None)


def pads(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv`` (an ``nn.Conv2d``) reads ``x`` padded to four channels: a channels-last 16-bit
    CUDA image ``[N, 3, H, W]`` (or one autocast runs in 16 bits), an ungrouped convolution padding with
    zeros, in eager mode."""
    if not (x.is_cuda and x.dim() == 4 and x.shape[1] == IMAGE_CHANNELS and conv.groups == 1
            and conv.padding_mode == "zeros" and not torch.compiler.is_compiling()):
        return False
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return False
    return _compute_dtype(x, conv.weight) in _SIXTEEN_BITS


def padded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` ``[A, 3, *]`` as ``[A, 4, *]`` in ``dtype``, channels last, the fourth channel zero (differentiable)."""
    shape = (t.shape[0], READ_CHANNELS, *t.shape[2:])
    out = torch.empty(shape, dtype=dtype, device=t.device, memory_format=torch.channels_last)
    out[:, IMAGE_CHANNELS:].zero_()
    out[:, :IMAGE_CHANNELS].copy_(t)
    return out


class PadsImageChannels:
    """Mixin for a subclass of ``nn.Conv2d``: its convolution reads an RGB image padded to four channels
    where :func:`pads` says so (see the module's text). Printed as its convolution class."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        if not pads(self, input):
            return super()._conv_forward(input, weight, bias)
        dtype = _compute_dtype(input, weight)
        return F.conv2d(padded(input, dtype), padded(weight, dtype), bias, self.stride, self.padding, self.dilation)

    def _get_name(self):
        classes = type(self).__mro__
        return classes[classes.index(PadsImageChannels) + 1].__name__  # the convolution class it extends


class ImageConv2d(PadsImageChannels, nn.Conv2d):
    """``nn.Conv2d`` for a network's input image: the same arguments, parameters, ``state_dict`` and
    results; an RGB image is read as four channels per pixel where cuDNN runs faster so (see the module's
    text)."""


_IMAGE_CONV = {nn.Conv2d: ImageConv2d}  # a convolution class -> its image-reading subclass


def register_image_conv(conv_class: type, image_class: type) -> None:
    """Make :func:`image_conv_class` give ``image_class`` for ``conv_class`` (a step-mode ``Conv2d``)."""
    _IMAGE_CONV[conv_class] = image_class


def image_conv_class(conv_class: type) -> type:
    """The class a network builds its first convolution with, where it would build ``conv_class``: its
    image-reading subclass where one is registered, else ``conv_class`` itself."""
    return _IMAGE_CONV.get(conv_class, conv_class)
