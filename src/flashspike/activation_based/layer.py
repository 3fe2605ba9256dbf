"""Layers with a step mode, as SpikingJelly's ``activation_based.layer``.

Every stateless wrapper (:class:`Conv2d`, :class:`BatchNorm2d`, :class:`MaxPool2d`, :class:`Linear`,
:class:`Flatten`, ...) *is* its ``torch.nn`` class (same parameters, same ``state_dict`` keys) with a
step mode: ``'s'`` runs it on one step ``[N, *]``, ``'m'`` on a sequence ``[T, N, *]`` merged into one
batch ``[T*N, *]`` (:func:`flashspike.functional.seq_to_ann_forward`). ``step_mode`` follows the
``torch.nn`` arguments, as in SpikingJelly; torch's ``device`` and ``dtype`` (and BatchNorm's
``bias``) are then taken by keyword.

The containers and stateful layers are flashspike's (:mod:`flashspike.layer`) with a step mode;
dropouts keep one mask for a whole sequence until ``reset()``.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from .. import layer as _core
from ..image_conv import PadsImageChannels, register_image_conv
from ..model.parametric_lif_net import VotingLayer as _VotingLayer
from . import base, functional

__all__ = [
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Upsample",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "MaxPool1d", "MaxPool2d", "MaxPool3d",
    "MaxUnpool1d", "MaxUnpool2d", "MaxUnpool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "Linear", "Flatten", "WSConv2d", "WSLinear",
    "SeqToANNContainer", "MultiStepContainer", "TLastSeqToANNContainer", "TLastMultiStepContainer",
    "StepModeContainer", "ElementWiseRecurrentContainer", "LinearRecurrentContainer",
    "Dropout", "Dropout2d", "DropConnectLinear", "SynapseFilter", "NeuNorm", "VotingLayer", "Delay",
    "PrintShapeModule", "ThresholdDependentBatchNorm1d", "ThresholdDependentBatchNorm2d",
    "ThresholdDependentBatchNorm3d", "TemporalWiseAttention",
]


# ----------------------------------------------------------------------------------------------------
# Stateless wrappers: a torch.nn class with a step mode
# ----------------------------------------------------------------------------------------------------


def _step_mode_signature(init) -> tuple[inspect.Signature, int]:
    """``init``'s signature with ``step_mode`` after its own arguments (before torch's ``device`` and
    ``dtype``, where SpikingJelly puts it), and the position of ``step_mode`` among the arguments."""
    own = [p for p in inspect.signature(init).parameters.values() if p.kind is not p.VAR_KEYWORD]
    cut = next((i for i, p in enumerate(own) if p.name == "device" or p.kind is p.KEYWORD_ONLY), len(own))
    step_mode = inspect.Parameter("step_mode", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="s")
    rest = [p.replace(kind=p.KEYWORD_ONLY) for p in own[cut:]]
    return inspect.Signature(own[:cut] + [step_mode] + rest), cut - 1  # minus self


def _split_step_mode(args: tuple, position: int, step_mode: str) -> tuple:
    """``step_mode`` given by position (SpikingJelly's order) or by keyword."""
    if len(args) > position:
        return args[:position] + args[position + 1:], args[position]
    return args, step_mode


def _with_step_mode(nn_class: type, layout: str | None, dims: tuple = ()) -> type:
    """``nn_class`` with a ``step_mode`` (after the ``torch.nn`` arguments). In step mode ``'m'`` the
    input (and any tensor argument with the same leading ``[T, N]``, as MaxUnpool's indices) is merged
    to ``[T*N, *]``; ``dims`` are the numbers of dimensions a sequence may have (``layout`` names them
    in errors)."""
    nn_init, nn_forward = nn_class.__init__, nn_class.forward
    signature, position = _step_mode_signature(nn_init)

    def __init__(self, *args, step_mode: str = "s", **kwargs):
        args, step_mode = _split_step_mode(args, position, step_mode)
        nn_init(self, *args, **kwargs)
        self.step_mode = step_mode

    def forward(self, x, *args, **kwargs):
        if self.step_mode == "s":
            return nn_forward(self, x, *args, **kwargs)
        if dims and (not isinstance(x, torch.Tensor) or x.dim() not in dims):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} in step mode 'm' expects x of shape {layout}, got {shape}")
        return functional.seq_to_ann_forward((x, *args), lambda *merged: nn_forward(self, *merged, **kwargs))

    def extra_repr(self) -> str:
        return nn_class.extra_repr(self) + f", step_mode={self.step_mode}"

    __init__.__signature__ = signature
    name = nn_class.__name__
    return type(name, (nn_class, base.StepModule), {
        "__init__": __init__, "forward": forward, "extra_repr": extra_repr, "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"``torch.nn.{name}`` with a step mode: ``'m'`` runs it on a sequence {layout or '[T, N, *]'} "
                   "merged into one batch."})


_1D, _2D, _3D = "[T, N, C, L]", "[T, N, C, H, W]", "[T, N, C, D, H, W]"

Conv1d = _with_step_mode(nn.Conv1d, _1D, (4,))
Conv2d = _with_step_mode(nn.Conv2d, _2D, (5,))
Conv3d = _with_step_mode(nn.Conv3d, _3D, (6,))


class ImageConv2d(PadsImageChannels, Conv2d):
    """:class:`Conv2d` for a network's input image: an RGB image read as four channels per pixel where
    cuDNN runs faster so (:mod:`flashspike.image_conv`); the zoo's ResNets build their stems with it."""


register_image_conv(Conv2d, ImageConv2d)
ConvTranspose1d = _with_step_mode(nn.ConvTranspose1d, _1D, (4,))
ConvTranspose2d = _with_step_mode(nn.ConvTranspose2d, _2D, (5,))
ConvTranspose3d = _with_step_mode(nn.ConvTranspose3d, _3D, (6,))
Upsample = _with_step_mode(nn.Upsample, None)
BatchNorm1d = _with_step_mode(nn.BatchNorm1d, "[T, N, C] or [T, N, C, L]", (3, 4))
BatchNorm2d = _with_step_mode(nn.BatchNorm2d, _2D, (5,))
BatchNorm3d = _with_step_mode(nn.BatchNorm3d, _3D, (6,))
GroupNorm = _with_step_mode(nn.GroupNorm, None)
MaxPool1d = _with_step_mode(nn.MaxPool1d, _1D, (4,))
MaxPool2d = _with_step_mode(nn.MaxPool2d, _2D, (5,))
MaxPool3d = _with_step_mode(nn.MaxPool3d, _3D, (6,))
MaxUnpool1d = _with_step_mode(nn.MaxUnpool1d, _1D, (4,))
MaxUnpool2d = _with_step_mode(nn.MaxUnpool2d, _2D, (5,))
MaxUnpool3d = _with_step_mode(nn.MaxUnpool3d, _3D, (6,))
AvgPool1d = _with_step_mode(nn.AvgPool1d, _1D, (4,))
AvgPool2d = _with_step_mode(nn.AvgPool2d, _2D, (5,))
AvgPool3d = _with_step_mode(nn.AvgPool3d, _3D, (6,))
AdaptiveAvgPool1d = _with_step_mode(nn.AdaptiveAvgPool1d, _1D, (4,))
AdaptiveAvgPool2d = _with_step_mode(nn.AdaptiveAvgPool2d, _2D, (5,))
AdaptiveAvgPool3d = _with_step_mode(nn.AdaptiveAvgPool3d, _3D, (6,))
Flatten = _with_step_mode(nn.Flatten, None)


class Linear(nn.Linear, base.StepModule):
    """``torch.nn.Linear`` with a step mode; it acts on the last dimension, so both modes are one call."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, step_mode: str = "s", **kwargs):
        super().__init__(in_features, out_features, bias, **kwargs)
        self.step_mode = step_mode


def _standardized(weight: torch.Tensor, gain, eps: float) -> torch.Tensor:
    """Weight standardization: each output unit's weights to zero mean and unit variance·fan-in."""
    dims = tuple(range(1, weight.dim()))
    fan_in = weight[0].numel()
    mean = weight.mean(dim=dims, keepdim=True)
    var = weight.var(dim=dims, keepdim=True)
    weight = (weight - mean) / (var * fan_in + eps) ** 0.5
    return weight if gain is None else weight * gain


class WSConv2d(Conv2d):
    """:class:`Conv2d` with weight standardization (and a learned per-channel ``gain``)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", step_mode="s", gain=True, eps=1e-4):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, step_mode=step_mode)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1)) if gain else None
        self.eps = eps

    def get_weight(self) -> torch.Tensor:
        return _standardized(self.weight, self.gain, self.eps)

    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(x, self.get_weight(), bias)


class WSLinear(Linear):
    """:class:`Linear` with weight standardization (and a learned per-unit ``gain``)."""

    def __init__(self, in_features, out_features, bias=True, step_mode="s", gain=True, eps=1e-4):
        super().__init__(in_features, out_features, bias, step_mode)
        self.gain = nn.Parameter(torch.ones(self.out_features, 1)) if gain else None
        self.eps = eps

    def get_weight(self) -> torch.Tensor:
        return _standardized(self.weight, self.gain, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.get_weight(), self.bias)


# ----------------------------------------------------------------------------------------------------
# Containers
# ----------------------------------------------------------------------------------------------------


def _check_single_step(modules) -> None:
    for m in modules:
        if getattr(m, "step_mode", "s") != "s":
            raise ValueError(f"{type(m).__name__} has step_mode {m.step_mode!r}: the modules of this container "
                             "must be in step mode 's' (the container runs them over the sequence)")


class SeqToANNContainer(_core.SeqToANNContainer, base.MultiStepModule):
    """:class:`flashspike.layer.SeqToANNContainer`: stateless single-step modules on ``[T*N, *]``."""

    def __init__(self, *args):
        super().__init__(*args)
        _check_single_step(self)


class MultiStepContainer(_core.MultiStepContainer, base.MultiStepModule):
    """:class:`flashspike.layer.MultiStepContainer`: single-step modules once per time step."""

    def __init__(self, *args):
        super().__init__(*args)
        _check_single_step(self)


class TLastSeqToANNContainer(SeqToANNContainer):
    """:class:`SeqToANNContainer` for sequences with time last, ``[N, *, T]``."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return super().forward(x_seq.movedim(-1, 0)).movedim(0, -1)


class TLastMultiStepContainer(MultiStepContainer):
    """:class:`MultiStepContainer` for sequences with time last, ``[N, *, T]``."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return super().forward(x_seq.movedim(-1, 0)).movedim(0, -1)


class StepModeContainer(nn.Sequential, base.StepModule):
    """Single-step modules that run in either step mode: in ``'m'``, once per step (``stateful``) or
    on the merged ``[T*N, *]`` batch (stateless)."""

    def __init__(self, stateful: bool, step_mode: str = "s", *args):
        super().__init__(*args)
        self.stateful = stateful
        _check_single_step(self)
        self.step_mode = step_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        run = super().forward
        if self.step_mode == "s":
            return run(x)
        if self.stateful:
            return functional.multi_step_forward(x, run)
        return functional.seq_to_ann_forward(x, run)


class _StepLoop(base.MemoryModule):
    """A flashspike single-step stateful layer in either step mode (``'m'`` runs it once per step)."""

    def __init__(self, step_mode: str):
        self.step_mode = step_mode

    def single_step_forward(self, x, *args, **kwargs):
        return self._core_class.forward(self, x, *args, **kwargs)

    def extra_repr(self) -> str:
        own = self._core_class.extra_repr(self)
        return (own + ", " if own else "") + f"step_mode={self.step_mode}"


def _looped(core_class: type, doc: str) -> type:
    """``core_class`` (a single-step stateful layer of :mod:`flashspike.layer`) with a step mode."""
    core_init = core_class.__init__
    signature, position = _step_mode_signature(core_init)

    def __init__(self, *args, step_mode: str = "s", **kwargs):
        args, step_mode = _split_step_mode(args, position, step_mode)
        core_init(self, *args, **kwargs)
        _StepLoop.__init__(self, step_mode)

    __init__.__signature__ = signature
    name = core_class.__name__
    return type(name, (_StepLoop, core_class), {"__init__": __init__, "_core_class": core_class,
                                                "__module__": __name__, "__qualname__": name, "__doc__": doc})


ElementWiseRecurrentContainer = _looped(
    _core.ElementWiseRecurrentContainer, "y[t] = sub_module(f(y[t−1], x[t])) with a step mode.")
LinearRecurrentContainer = _looped(
    _core.LinearRecurrentContainer, "y[t] = sub_module(rc([x[t], y[t−1]])) with a step mode.")
SynapseFilter = _looped(_core.SynapseFilter, "A synapse's current I[t] (:class:`flashspike.layer.SynapseFilter`) "
                                             "with a step mode.")
NeuNorm = _looped(_core.NeuNorm, "Neighbour normalization (:class:`flashspike.layer.NeuNorm`) with a step mode.")
DropConnectLinear = _looped(_core.DropConnectLinear,
                            "Linear layer dropping weights (:class:`flashspike.layer.DropConnectLinear`) with a "
                            "step mode.")


# ----------------------------------------------------------------------------------------------------
# Dropouts: one mask per sequence (until reset())
# ----------------------------------------------------------------------------------------------------


class Dropout(base.MemoryModule, _core.Dropout):
    """Dropout with one mask, drawn at the first training call and kept until ``reset()``: every step
    of a sequence (``'m'``) and every single-step call (``'s'``) sees the same dropped units."""

    def __init__(self, p: float = 0.5, step_mode: str = "s"):
        _core.Dropout.__init__(self, p)
        self.step_mode = step_mode

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        return _core.Dropout.forward(self, x)

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return _core._MultiStepMask.forward(self, x_seq)

    def extra_repr(self) -> str:
        return f"p={self.p}, step_mode={self.step_mode}"


class Dropout2d(Dropout):
    """:class:`Dropout` of whole channels of ``[N, C, H, W]`` steps."""

    create_mask = _core.Dropout2d.create_mask

    def __init__(self, p: float = 0.2, step_mode: str = "s"):
        super().__init__(p, step_mode)


# ----------------------------------------------------------------------------------------------------
# Other layers
# ----------------------------------------------------------------------------------------------------


class VotingLayer(_VotingLayer, base.StepModule):
    """``[N, k·voting_size] -> [N, k]``: the mean of each group of ``voting_size`` outputs, in either step mode."""

    def __init__(self, voting_size: int = 10, step_mode: str = "s"):
        super().__init__(voting_size)
        self.step_mode = step_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step_mode == "s":
            return super().forward(x)
        return functional.seq_to_ann_forward(x, super().forward)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", step_mode={self.step_mode}"


class Delay(base.MemoryModule):
    """Delays its input by ``delay_steps`` steps: y[t] = x[t − delay_steps], zeros before."""

    def __init__(self, delay_steps: int, step_mode: str = "s"):
        super().__init__()
        if isinstance(delay_steps, bool) or not isinstance(delay_steps, int) or delay_steps < 0:
            raise ValueError(f"delay_steps must be an int >= 0, got {delay_steps!r}")
        self._delay_steps = delay_steps
        self.step_mode = step_mode
        self.register_memory("queue", [])

    @property
    def delay_steps(self) -> int:
        return self._delay_steps

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._delay_steps == 0:
            return x
        self.queue = self.queue + [x]
        if len(self.queue) > self._delay_steps:
            y, self.queue = self.queue[0], self.queue[1:]
            return y
        return torch.zeros_like(x)

    def extra_repr(self) -> str:
        return f"delay_steps={self.delay_steps}, step_mode={self.step_mode}"


PrintShapeModule = _core.PrintShapeModule


class _MultiStepOnly(base.MultiStepModule):
    def _start_in_multi_step(self) -> None:
        self.step_mode = "m"


class ThresholdDependentBatchNorm1d(_core.MultiStepThresholdDependentBatchNorm1d, _MultiStepOnly):
    """tdBN for ``[T, N, C]`` or ``[T, N, C, L]``: ``(alpha, v_th, num_features, ...)``; step mode 'm' only."""

    def __init__(self, alpha: float, v_th: float, *args, **kwargs):
        super().__init__(alpha, v_th, *args, **kwargs)
        self._start_in_multi_step()


class ThresholdDependentBatchNorm2d(_core.MultiStepThresholdDependentBatchNorm2d, _MultiStepOnly):
    """tdBN for ``[T, N, C, H, W]``: ``(alpha, v_th, num_features, ...)``; step mode 'm' only."""

    def __init__(self, alpha: float, v_th: float, *args, **kwargs):
        super().__init__(alpha, v_th, *args, **kwargs)
        self._start_in_multi_step()


class ThresholdDependentBatchNorm3d(_core.MultiStepThresholdDependentBatchNorm3d, _MultiStepOnly):
    """tdBN for ``[T, N, C, D, H, W]``: ``(alpha, v_th, num_features, ...)``; step mode 'm' only."""

    def __init__(self, alpha: float, v_th: float, *args, **kwargs):
        super().__init__(alpha, v_th, *args, **kwargs)
        self._start_in_multi_step()


class TemporalWiseAttention(_core.MultiStepTemporalWiseAttention, _MultiStepOnly):
    """Temporal-wise attention (:class:`flashspike.layer.MultiStepTemporalWiseAttention`); step mode 'm' only."""

    def __init__(self, T: int, reduction: int = 16, dimension: int = 4):
        super().__init__(T, reduction, dimension)
        self._start_in_multi_step()
