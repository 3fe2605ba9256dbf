"""Neuron inputs that the backward computes again instead of the neuron keeping H.

A kernel backend's backward reads H, the potential before each step's reset, which the forward
writes and autograd keeps: a tensor the size of the input for every neuron layer. When that input
is the output of a layer whose own backward keeps that layer's input anyway (BatchNorm does), the
neuron need keep nothing of its size: its backward runs the layer again on what autograd keeps, then
the neuron's forward again, and has H back, the same bits (both are deterministic).

A layer offers this by marking its output with a :class:`Recipe` (:func:`mark`): a function and the
tensors it reads. A layer whose output is a per-channel affine map of a kept input, rounded once to
the input's dtype (``round(x * scale[c] + shift[c])``, one fused multiply-add in float32), marks it with
:func:`mark_normalized` instead: the kernel backends then read that input in the neuron's own kernel,
normalizing it as they load it, and write H without the layer's output ever being made again (the
BatchNorm layers of :mod:`flashspike.memory.batchnorm_recompute` do one or the other; the two marks
are the public half of this module, the rest is the neurons' own). The eager neuron path
(:mod:`.autograd`) takes the recipe of an input that is the marked output itself or a view of it
(:func:`recipe_for`), unless the output was changed in place after it was marked. Compiled code never
marks (its graphs keep what the compiler decides).
"""

from __future__ import annotations

import torch

__all__ = ["Recipe", "Normalized", "mark", "mark_normalized", "recipe_for", "recompute", "normalized_input"]

_ATTRIBUTE = "_flashspike_recipe"


class Recipe:
    """How to compute a marked output again: ``inputs`` are tensors (or None) that autograd keeps for
    the layer anyway; ``how`` is (function, the output's shape, strides and dtype, the forward's
    autocast state): ``function(*inputs)`` gives the output again. The neuron keeps ``inputs`` as
    saved tensors and only ``how`` beside them."""

    __slots__ = ("inputs", "how", "version")

    def __init__(self, output: torch.Tensor, function, inputs: tuple):
        device_type = output.device.type
        enabled = torch.is_autocast_enabled(device_type)
        autocast = (device_type, torch.get_autocast_dtype(device_type) if enabled else None, enabled)
        self.inputs = inputs
        self.how = (function, (output.shape, output.stride(), output.dtype), autocast)
        self.version = output._version


class Normalized:
    """A marked output that is ``round(x * scale[c] + shift[c])``: ``inputs`` is (x, scale, shift), x
    dense and laid out like the output, scale and shift float32 of one element per channel c (the
    output's dimension 1, of ``channels`` elements ``channel_stride`` apart in memory); ``how`` is
    (channel_stride, channels)."""

    __slots__ = ("inputs", "how", "version")

    def __init__(self, output: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor):
        self.inputs = (x, scale, shift)
        self.how = (output.stride(1), output.shape[1])
        self.version = output._version


def mark(output: torch.Tensor, function, inputs: tuple) -> None:
    """Mark ``output`` as ``function(*inputs)``, computable again from ``inputs`` (see the module's text)."""
    setattr(output, _ATTRIBUTE, Recipe(output, function, inputs))


def mark_normalized(output: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Mark ``output`` as ``round(x * scale[c] + shift[c])`` per channel (see :class:`Normalized`): ``x``
    has the output's shape, dtype and strides and no gaps; the fused multiply-add runs in float32 and
    rounds once to the dtype, as the kernels that read ``x`` again do."""
    setattr(output, _ATTRIBUTE, Normalized(output, x, scale, shift))


def recipe_for(x: torch.Tensor):
    """``(recipe, view)`` when ``x`` is a marked output, or a view of one, unchanged since it was
    marked (``view``: x's shape, strides and offset in the output); else None."""
    base = x._base
    if base is None:
        base = x
    recipe = getattr(base, _ATTRIBUTE, None)
    if recipe is None or x._version != recipe.version:
        return None
    return recipe, (x.shape, x.stride(), x.storage_offset() - base.storage_offset())


def recompute(how, view, inputs) -> torch.Tensor:
    """The input that :func:`recipe_for` found, computed again from ``inputs`` (its recipe's inputs,
    as autograd gives them back); ``how`` is the recipe's."""
    function, geometry, (device_type, dtype, enabled) = how
    with torch.no_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
        output = function(*inputs)
    if (output.shape, output.stride(), output.dtype) != geometry:
        raise RuntimeError(
            "recomputing a neuron's input for its backward gave shape, strides and dtype "
            f"{(tuple(output.shape), output.stride(), output.dtype)}, not the forward's "
            f"{(tuple(geometry[0]), geometry[1], geometry[2])}"
        )
    shape, strides, offset = view
    return output.as_strided(shape, strides, output.storage_offset() + offset)


def normalized_input(recipe: Normalized, view, x_seq: torch.Tensor):
    """The kept input of a :class:`Normalized` recipe, as the kernels read the neuron input ``x_seq``
    (a ``[T, *]`` sequence in sequence layout, or one step expanded over T): the same view of it
    that ``view`` (from :func:`recipe_for`) is of the output, expanded alike. None where the kernels
    could not find an element's channel from its place in a step (c = (i // channel_stride) %
    channels for element i of every step): each step must start on a boundary of the channel planes."""
    x = recipe.inputs[0]
    channel_stride, channels = recipe.how
    plane = channel_stride * channels
    shape, strides, offset = view
    if offset % plane or x_seq.stride(0) % plane:
        return None
    source = x.as_strided(shape, strides, x.storage_offset() + offset)
    if tuple(source.shape) != tuple(x_seq.shape):  # one step, repeated over T by the caller
        source = source.expand(x_seq.shape)
    return source if source.stride() == x_seq.stride() else None
