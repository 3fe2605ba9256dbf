"""What every zoo model shares: running its stateless layers in one step mode or the other, turning
the input into a sequence, checking the builder's arguments, making the transformers' neurons, averaging
their tokens."""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from .. import functional, neuron
from ..base import ForOneCall, takes_fused_call
from ..memory.batchnorm_recompute import normalized_in_neuron
from ..neuron import ADDEND


def apply_in_order(x: torch.Tensor, modules) -> torch.Tensor:
    """One module, or a list of them, applied to one time step ``[N, *]``."""
    for module in modules if isinstance(modules, (list, tuple, nn.Sequential)) else (modules,):
        x = module(x)
    return x


_NOT_ENCODING = object()  # StepModule.fire's default: the stateless path, not the input's encoding
_NOT_ADDED = contextlib.nullcontext()


class StepModule(nn.Module):
    """A zoo module in one step mode: ``multi_step`` False runs one time step ``[N, *]`` per call,
    True the whole sequence ``[T, N, *]``. Its stateless layers go through :meth:`stateless`, so one
    ``forward`` serves both modes; only the neurons differ (single-step or multi-step nodes).
    """

    multi_step = False
    # The namespace the layers are built from (Conv2d, BatchNorm2d, MaxPool2d, AdaptiveAvgPool2d, Linear,
    # Dropout): torch.nn here; flashspike.activation_based.layer for the step-mode zoo, whose layers
    # handle the sequence themselves (that zoo's models keep multi_step False).
    layers = nn

    @property
    def neuron_argument(self) -> str:
        """The builder argument that names the neuron class, for error messages."""
        return "multi_step_neuron" if self.multi_step else "single_step_neuron"

    def stateless(self, x: torch.Tensor, modules) -> torch.Tensor:
        """Stateless modules (convolution, batch norm, pool, linear) on one step or on every step at once."""
        if self.multi_step:
            return functional.seq_to_ann_forward(x, modules)
        return apply_in_order(x, modules)

    def fire(self, neuron: nn.Module, x: torch.Tensor, modules, encode_T=_NOT_ENCODING, add=None) -> torch.Tensor:
        """``neuron`` on the stateless ``modules`` applied to ``x`` (through :meth:`encode` with its ``T``
        when ``encode_T`` is given: the network's input), and with ``add`` (a tensor shaped like the
        spikes) ``add + spikes``. Where the last module is a BatchNorm, only the neuron reads its output,
        so the neuron may fire from the BatchNorm's input instead
        (:func:`flashspike.memory.batchnorm_recompute.normalized_in_neuron`); and a flashspike multi-step
        neuron called plainly (no hooks, which would see the sum for spikes) outside compiled code
        returns the sum itself, which its kernels write in place of the spikes."""
        last = modules[-1] if isinstance(modules, (list, tuple, nn.Sequential)) else modules
        added = add is not None and takes_fused_call(neuron)
        with normalized_in_neuron(last, neuron), ForOneCall(neuron, ADDEND, add) if added else _NOT_ADDED:
            if encode_T is _NOT_ENCODING:
                out = neuron(self.stateless(x, modules))
            else:
                out = neuron(self.encode(x, modules, encode_T))
        return out if add is None or added else add + out

    def encode(self, x: torch.Tensor, modules, T: int | None) -> torch.Tensor:
        """The first stateless layers applied to the network's input.

        Single-step: ``x`` is one step ``[N, C, H, W]``. Multi-step: ``x`` is a sequence
        ``[T, N, C, H, W]``, or a static image ``[N, C, H, W]`` whose encoding is computed once and
        repeated ``T`` times (as a view; its gradient is summed over the steps).
        """
        if not self.multi_step:
            return apply_in_order(x, modules)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a tensor, got {type(x).__name__}")
        if x.dim() == 5:
            return functional.seq_to_ann_forward(x, modules)
        if x.dim() != 4:
            raise ValueError(
                f"{type(self).__name__} expects x of shape [T, N, C, H, W] or [N, C, H, W], got {tuple(x.shape)}"
            )
        if T is None:
            raise ValueError(
                f"{type(self).__name__} got a static input [N, C, H, W] {tuple(x.shape)} but T is None: "
                "give the number of time steps T, or pass a sequence [T, N, C, H, W]"
            )
        y = apply_in_order(x, modules)
        return y.unsqueeze(0).expand(T, *y.shape)


def check_T(T) -> int | None:
    if T is not None and (isinstance(T, bool) or not isinstance(T, int) or T < 1):
        raise ValueError(f"T must be a positive int or None, got {T!r}")
    return T


def check_num_classes(num_classes) -> int:
    """The classifier's output size: a positive int (its Linear layer would fail with a less clear error)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def check_neuron(neuron, name: str):
    """The neuron factory every spiking layer is built with: a class such as ``neuron.MultiStepIFNode``."""
    if not callable(neuron):
        raise TypeError(
            f"{name} must be a neuron class (or another callable that returns a neuron module), got {neuron!r}"
        )
    return neuron


def make_multi_step_neuron(spiking_neuron, kwargs: dict, defaults: dict | None = None) -> nn.Module:
    """One neuron of a transformer model (SpikingJelly 2.x's rule for its ``spiking_neuron`` argument).

    With ``spiking_neuron`` None: ``neuron.MultiStepLIFNode`` with this position's paper ``defaults``
    (e.g. ``tau=2.0, detach_reset=True``), each overridden by ``kwargs``. With a neuron class: that class
    with ``kwargs`` alone, the defaults not applied. Every neuron gets its own copy of the keyword values
    (its own surrogate module). ``step_mode`` is accepted for SpikingJelly 2.x's scripts and must be 'm'
    (these models run whole sequences); it is not passed on.
    """
    options = dict(kwargs)
    step_mode = options.pop("step_mode", "m")
    if step_mode != "m":
        raise ValueError(f"step_mode must be 'm' (the transformer models run whole sequences [T, N, *]), "
                         f"got {step_mode!r}")
    if spiking_neuron is None:
        options = {**(defaults or {}), **options}
        spiking_neuron = neuron.MultiStepLIFNode
    else:
        check_neuron(spiking_neuron, "spiking_neuron")
    return spiking_neuron(**copy.deepcopy(options))


def image_to_sequence(x: torch.Tensor, T: int, who: str) -> torch.Tensor:
    """A sequence ``[T, N, C, H, W]`` as it is, or a static image ``[N, C, H, W]`` repeated ``T`` times."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who} expects a tensor, got {type(x).__name__}")
    if x.dim() == 5:
        return x
    if x.dim() == 4:
        # A copy, not an expanded view: the stem merges T and N into one batch, which a view can't.
        return x.unsqueeze(0).repeat(T, 1, 1, 1, 1)
    raise ValueError(f"{who} expects x of shape [T, N, C, H, W] or a static image [N, C, H, W], "
                     f"got {tuple(x.shape)}")


def mean_over_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """``[T, N, C, L] -> [T, N, C]``: the mean over the L tokens, taken along the tokens' memory.

    A mean's backward writes a new gradient laid out like the tensor it averaged. Tokens of a
    channels_last image (token-major memory, ``[T, N, L, C]``) are therefore averaged as that view, so
    the gradient entering the encoder has the activations' layout: one of another layout would make
    every residual sum and neuron behind it copy it or add it element by element across layouts."""
    if tokens.shape[-1] > 1 and tokens.stride(-2) == 1:
        return tokens.transpose(-1, -2).mean(dim=-2)
    return tokens.mean(dim=-1)


def refuse_pretrained(pretrained: bool, arch: str) -> None:
    if pretrained:
        raise NotImplementedError(
            f"pretrained=True is not supported: flashspike does not download weights. Build {arch} with "
            "pretrained=False and load a state_dict yourself (SpikingJelly checkpoints load with strict=True)."
        )


def name_builder(builder, name: str, summary: str):
    """Give a builder made in a loop its public name and a docstring (pretrained, progress and the
    keywords are the same for all)."""
    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = (
        f"{summary}\n\n``pretrained=True`` raises NotImplementedError (no weights are downloaded); ``progress`` "
        "is accepted for compatibility and unused. ``kwargs`` holds the model's options (num_classes, ...); "
        "every other keyword goes to the neuron."
    )
    return builder


def head_dim(dim: int, num_heads: int) -> int:
    """The channels of each attention head: ``dim / num_heads``, which must divide evenly."""
    if dim % num_heads:
        raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
    return dim // num_heads
