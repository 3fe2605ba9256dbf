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
and :func:`remaking` below are the public half of this module, the rest is the neurons' own). The
eager neuron path (:mod:`.autograd`) takes the recipe of an input that is the marked output itself or
a view of it (:func:`recipe_for`), unless the output was changed in place after it was marked.
Compiled code never marks (its graphs keep what the compiler decides).

A marked output may itself be what such a layer keeps: a convolution's output is the BatchNorm's
input, kept by the BatchNorm and read again by the neuron after it. Inside :func:`remaking`, autograd
keeps in its place only the recipe (whose inputs the convolution keeps anyway), and the first backward
to read it makes it again, once for every layer that kept it (:mod:`flashspike.memory.conv_recompute`
marks convolution outputs so).
"""

from __future__ import annotations

import contextlib

import torch

from ..base import autocast_dtype

__all__ = ["Recipe", "Normalized", "mark", "mark_normalized", "fill_unwritten", "recipe_for", "recompute",
           "normalized_input", "remaking"]

_ATTRIBUTE = "_flashspike_recipe"


class Recipe:
    """How to compute a marked output again: ``inputs`` are tensors (or None) that autograd keeps for
    the layer anyway; ``how`` is (function, the output's shape, strides and dtype, the forward's
    autocast state): ``function(*inputs)`` gives the output again. The neuron keeps ``inputs`` as
    saved tensors and only ``how`` beside them."""

    __slots__ = ("inputs", "how", "version", "keepers", "made_again")

    def __init__(self, output: torch.Tensor, function, inputs: tuple):
        dtype = autocast_dtype(output)
        autocast = (output.device.type, dtype, dtype is not None)
        self.inputs = inputs
        self.how = (function, (output.shape, output.stride(), output.dtype), autocast)
        self.version = output._version
        # (inside :func:`remaking`) how many saved tensors stand for the output, and the output made
        # again for those whose backward has not read it yet
        self.keepers = 0
        self.made_again = None


class Normalized:
    """A marked output that is ``round(x * scale[c] + shift[c])``: ``inputs`` is (x, scale, shift), x
    dense and laid out like the output, scale and shift float32 of one element per channel c (the
    output's dimension 1, of ``channels`` elements ``channel_stride`` apart in memory); ``how`` is
    (channel_stride, channels). ``fill``: None once the output holds its values; else the output is
    not written yet, and ``fill(output)`` writes them (see :func:`fill_unwritten`)."""

    __slots__ = ("inputs", "how", "version", "fill")

    def __init__(self, output: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, fill=None):
        self.inputs = (x, scale, shift)
        self.how = (output.stride(1), output.shape[1])
        self.version = output._version
        self.fill = fill


def mark(output: torch.Tensor, function, inputs: tuple) -> None:
    """Mark ``output`` as ``function(*inputs)``, computable again from ``inputs`` (see the module's text)."""
    setattr(output, _ATTRIBUTE, Recipe(output, function, inputs))


def mark_normalized(output: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                    fill=None) -> None:
    """Mark ``output`` as ``round(x * scale[c] + shift[c])`` per channel (see :class:`Normalized`): ``x``
    has the output's shape, dtype and strides and no gaps; the fused multiply-add runs in float32 and
    rounds once to the dtype, as the kernels that read ``x`` again do.

    With ``fill``, the output is not written yet (memory of its shape and strides): a kernel-backend
    neuron reading it fires from ``x``, normalizing it as it loads it, and the output is never made;
    anything else that reads it through a flashspike neuron has ``fill(output)`` write it first. A
    layer marks an output so only for a caller that hands it to such a neuron and nothing else."""
    setattr(output, _ATTRIBUTE, Normalized(output, x, scale, shift, fill))


def fill_unwritten(x: torch.Tensor) -> bool:
    """Write the values of ``x`` (or of the output it is a view of) where it is a :class:`Normalized`
    output not written yet; returns whether it wrote them."""
    base = x._base
    if base is None:
        base = x
    recipe = getattr(base, _ATTRIBUTE, None)
    if recipe is None or getattr(recipe, "fill", None) is None:
        return False
    fill, recipe.fill = recipe.fill, None
    fill(base)
    return True


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


def _output_again(how, inputs) -> torch.Tensor:
    """A recipe's whole output, computed again from ``inputs``; ``how`` is the recipe's."""
    function, geometry, (device_type, dtype, enabled) = how
    with torch.no_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
        output = function(*inputs)
    if (output.shape, output.stride(), output.dtype) != geometry:
        raise RuntimeError(
            "recomputing a layer's output for the backward gave shape, strides and dtype "
            f"{(tuple(output.shape), output.stride(), output.dtype)}, not the forward's "
            f"{(tuple(geometry[0]), geometry[1], geometry[2])}"
        )
    return output


def _viewed(output: torch.Tensor, view) -> torch.Tensor:
    shape, strides, offset = view
    return output.as_strided(shape, strides, output.storage_offset() + offset)


def recompute(how, view, inputs) -> torch.Tensor:
    """The input that :func:`recipe_for` found, computed again from ``inputs`` (its recipe's inputs,
    as autograd gives them back); ``how`` is the recipe's."""
    return _viewed(_output_again(how, inputs), view)


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


def _versions(tensors) -> tuple:
    return tuple(None if t is None else t._version for t in tensors)


class _MadeAgain:
    """What autograd keeps, inside :func:`remaking`, for a marked output or a view of it: the recipe, the
    view, and the versions of the recipe's inputs then (an input changed in place since would make
    another output)."""

    __slots__ = ("recipe", "view", "versions")

    def __init__(self, recipe: Recipe, view):
        self.recipe, self.view, self.versions = recipe, view, _versions(recipe.inputs)
        recipe.keepers += 1

    def tensor(self) -> torch.Tensor:
        recipe = self.recipe
        if _versions(recipe.inputs) != self.versions:
            raise RuntimeError(
                "one of the tensors a layer's output is computed again from, for the backward, was modified by "
                "an inplace operation after the forward (its version moved from "
                f"{self.versions} to {_versions(recipe.inputs)}): the backward would read another output"
            )
        output = recipe.made_again
        if output is None:
            output = _output_again(recipe.how, recipe.inputs)
        recipe.keepers -= 1
        # kept for the other layers that kept the output, until the last of them has read it
        recipe.made_again = output if recipe.keepers > 0 else None
        return _viewed(output, self.view)


class _Kept:
    """A tensor kept as it is inside :func:`remaking`: detached (a saved output kept whole would hold its
    own autograd node), with its version then, which autograd checks of the tensors it keeps itself."""

    __slots__ = ("tensor", "version")

    def __init__(self, tensor: torch.Tensor):
        self.tensor, self.version = tensor.detach(), tensor._version

    def read(self) -> torch.Tensor:
        if self.tensor._version != self.version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace operation: "
                f"a tensor of shape {list(self.tensor.shape)} at version {self.tensor._version}, kept at version "
                f"{self.version}"
            )
        return self.tensor


class _Outer:
    """A tensor kept by the saved-tensor hooks that were in force outside :func:`remaking`."""

    __slots__ = ("packed", "unpack")

    def __init__(self, packed, unpack):
        self.packed, self.unpack = packed, unpack


def _hooks(outer):
    """The pack and unpack hooks of :func:`remaking`, passing what they do not make again to ``outer``
    (the hooks in force before, or None)."""

    def keep(tensor: torch.Tensor):
        found = recipe_for(tensor)
        if found is not None and isinstance(found[0], Recipe):
            return _MadeAgain(*found)
        if outer is not None:
            return _Outer(outer[0](tensor), outer[1])
        return _Kept(tensor)

    def read(kept) -> torch.Tensor:
        if isinstance(kept, _MadeAgain):
            return kept.tensor()
        if isinstance(kept, _Outer):
            return kept.unpack(kept.packed)
        return kept.read()

    return keep, read


_top_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
_NOTHING_MADE_AGAIN = contextlib.nullcontext()


def remaking(tensors):
    """A context for a layer's forward that reads ``tensors``: where one of them is a marked output
    (a :class:`Recipe`, through :func:`mark`) or a view of one, unchanged since, autograd keeps in
    its place only the recipe, and the backward makes the output again from the recipe's inputs, once
    for every layer that kept it; the layer's other saved tensors go to the saved-tensor hooks in force
    outside, if any. Else (nothing marked among ``tensors``) a context that does nothing."""
    for tensor in tensors:
        if tensor is not None:
            found = recipe_for(tensor)
            if found is not None and isinstance(found[0], Recipe):
                outer = None if _top_hooks is None else _top_hooks(False)
                return torch.autograd.graph.saved_tensors_hooks(*_hooks(outer))
    return _NOTHING_MADE_AGAIN
