"""The convolutional nets of Fang et al., "Incorporating Learnable Membrane Time Constant to Enhance
Learning of Spiking Neural Networks" (https://arxiv.org/abs/2007.05785), one per data set.

Each net: blocks of 3x3 convolution, batch norm, neuron (with 2x2 max pools after some of them), then
two dropout, linear, neuron layers and a voting layer that averages the output neurons in groups of
10 (100 neurons for 10 classes, 110 for 11). They are built for the parametric LIF neuron
(``neuron.ParametricLIFNode`` / ``neuron.MultiStepParametricLIFNode``) but take any neuron class.
The dropouts are ``layer.Dropout`` (single-step) and ``layer.MultiStepDropout`` (one mask for all time
steps). Class names, arguments, ``forward`` signatures and ``state_dict`` keys are those of
SpikingJelly's ``parametric_lif_net`` module:

=====================  ===========  ========================================================
net                    input        multi-step ``forward``
=====================  ===========  ========================================================
(Fashion)MNISTNet      1x28x28      ``forward(x, T)``: a static image [N, 1, 28, 28] over T steps
NMNISTNet              2x34x34      ``forward(x)``: a sequence [T, N, 2, 34, 34]
CIFAR10Net             3x32x32      ``forward(x, T)``: [N, 3, 32, 32] over T steps
CIFAR10DVSNet          2x128x128    ``forward(x)``: a sequence [T, N, 2, 128, 128]
DVSGestureNet          2x128x128    ``forward(x)``: a sequence [T, N, 2, 128, 128]
=====================  ===========  ========================================================

Multi-step nets return ``[T, N, classes]``; single-step ones ``forward(x)`` one step ``[N, classes]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import layer
from .common import StepModule, check_neuron

__all__ = ["MNISTNet", "FashionMNISTNet", "NMNISTNet", "CIFAR10Net", "CIFAR10DVSNet", "DVSGestureNet",
           "MultiStepMNISTNet", "MultiStepFashionMNISTNet", "MultiStepNMNISTNet", "MultiStepCIFAR10Net",
           "MultiStepCIFAR10DVSNet", "MultiStepDVSGestureNet"]


class VotingLayer(nn.Module):
    """``[N, k·voting_size] -> [N, k]``: the mean of each group of ``voting_size`` neighbouring outputs."""

    def __init__(self, voting_size: int = 10):
        super().__init__()
        self.voting_size = voting_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool1d(x.unsqueeze(1), self.voting_size, self.voting_size).squeeze(1)

    def extra_repr(self) -> str:
        return f"voting_size={self.voting_size}"


class _PLIFNet(StepModule):
    """``convs`` blocks conv{i}/bn{i}/sn{i} (with pool{i} after those in ``pool_after``), then the
    layers dp{k}/fc{k}/sn{k} for k = convs+1 and convs+2, then ``voting``."""

    in_channels: int
    convs: int
    pool_after: frozenset
    conv_bias: bool
    side: int  # height and width left for the first linear layer
    hidden: int
    outputs: int
    # (in_channels, side) of a net that SpikingJelly builds as another one and then rebuilds its first
    # convolution and first linear layer for (the N-MNIST nets, built as MNIST nets): the same seed then
    # gives the same weights, and those two layers come last in parameters() and state_dict(), so
    # optimizer states carry over. None for the others.
    rebuilt_for = None

    def __init__(self, channels, neuron, **kwargs):
        super().__init__()
        check_neuron(neuron, self.neuron_argument)
        dropout = layer.MultiStepDropout if self.multi_step else layer.Dropout
        for i in range(1, self.convs + 1):
            conv_in = self.in_channels if i == 1 else channels
            setattr(self, f"conv{i}", nn.Conv2d(conv_in, channels, kernel_size=3, padding=1, bias=self.conv_bias))
            setattr(self, f"bn{i}", nn.BatchNorm2d(channels))
            setattr(self, f"sn{i}", neuron(**kwargs))
            if i in self.pool_after:
                setattr(self, f"pool{i}", nn.MaxPool2d(2, 2))
        sizes = [channels * self.side * self.side, self.hidden, self.outputs]
        for k, (fc_in, fc_out) in enumerate(zip(sizes, sizes[1:]), self.convs + 1):
            setattr(self, f"dp{k}", dropout(0.5))
            setattr(self, f"fc{k}", nn.Linear(fc_in, fc_out))
            setattr(self, f"sn{k}", neuron(**kwargs))
        self.voting = VotingLayer(10)
        if self.rebuilt_for is not None:
            in_channels, side = self.rebuilt_for
            fc = f"fc{self.convs + 1}"
            del self.conv1, self._modules[fc]
            self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, bias=self.conv_bias)
            setattr(self, fc, nn.Linear(channels * side * side, self.hidden))

    def _pool(self, i: int) -> list:
        return [getattr(self, f"pool{i}")] if i in self.pool_after else []

    def _run(self, x: torch.Tensor, T: int | None) -> torch.Tensor:
        x = self.fire(self.sn1, x, [self.conv1, self.bn1], encode_T=T)
        for i in range(2, self.convs + 1):
            x = self.fire(getattr(self, f"sn{i}"), x,
                          self._pool(i - 1) + [getattr(self, f"conv{i}"), getattr(self, f"bn{i}")])
        x = self.stateless(x, self._pool(self.convs)).flatten(-3)
        for k in (self.convs + 1, self.convs + 2):
            x = self.stateless(getattr(self, f"dp{k}")(x), getattr(self, f"fc{k}"))
            x = getattr(self, f"sn{k}")(x)
        return self.stateless(x, self.voting)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One time step ``[N, C, H, W] -> [N, classes]``."""
        return self._run(x, None)


class _StaticInput(_PLIFNet):
    multi_step = True

    def forward(self, x: torch.Tensor, T: int) -> torch.Tensor:
        """A static image ``[N, C, H, W]`` shown for ``T`` steps ``-> [T, N, classes]``."""
        return self._run(x, T)


class _SequenceInput(_PLIFNet):
    multi_step = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A sequence ``[T, N, C, H, W] -> [T, N, classes]``."""
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects x of shape [T, N, C, H, W], got {shape}")
        return self._run(x, None)


class _MNIST:
    in_channels, convs, pool_after, conv_bias, side, hidden, outputs = 1, 2, frozenset({1, 2}), False, 7, 2048, 100


class _NMNIST(_MNIST):
    rebuilt_for = (2, 8)


class _CIFAR10:
    in_channels, convs, pool_after, conv_bias, side, hidden, outputs = 3, 6, frozenset({3, 6}), False, 8, 2048, 100


class _CIFAR10DVS:
    in_channels, convs, pool_after, conv_bias, side, hidden, outputs = 2, 4, frozenset({1, 2, 3, 4}), True, 8, 512, 100


class _DVSGesture:
    in_channels, convs, pool_after, conv_bias, side, hidden, outputs = 2, 5, frozenset(range(1, 6)), True, 4, 512, 110


class MNISTNet(_MNIST, _PLIFNet):
    """Single-step MNIST net (28x28 grey images, 10 classes)."""

    def __init__(self, channels=128, single_step_neuron=None, **kwargs):
        super().__init__(channels, single_step_neuron, **kwargs)


class FashionMNISTNet(MNISTNet):
    """Single-step Fashion-MNIST net: the MNIST net."""


class NMNISTNet(_NMNIST, MNISTNet):
    """Single-step N-MNIST net (2x34x34 event frames, 10 classes)."""


class CIFAR10Net(_CIFAR10, _PLIFNet):
    """Single-step CIFAR-10 net (32x32 colour images, 10 classes)."""

    def __init__(self, channels=256, single_step_neuron=None, **kwargs):
        super().__init__(channels, single_step_neuron, **kwargs)


class CIFAR10DVSNet(_CIFAR10DVS, _PLIFNet):
    """Single-step CIFAR10-DVS net (2x128x128 event frames, 10 classes)."""

    def __init__(self, channels=128, single_step_neuron=None, **kwargs):
        super().__init__(channels, single_step_neuron, **kwargs)


class DVSGestureNet(_DVSGesture, _PLIFNet):
    """Single-step DVS128 Gesture net (2x128x128 event frames, 11 classes)."""

    def __init__(self, channels=128, single_step_neuron=None, **kwargs):
        super().__init__(channels, single_step_neuron, **kwargs)


class MultiStepMNISTNet(_MNIST, _StaticInput):
    """Multi-step MNIST net: ``forward(x, T)`` with a static image ``[N, 1, 28, 28]``."""

    def __init__(self, channels=128, multi_step_neuron=None, **kwargs):
        super().__init__(channels, multi_step_neuron, **kwargs)


class MultiStepFashionMNISTNet(MultiStepMNISTNet):
    """Multi-step Fashion-MNIST net: the MNIST net."""


class MultiStepNMNISTNet(_NMNIST, _SequenceInput):
    """Multi-step N-MNIST net: ``forward(x)`` with ``[T, N, 2, 34, 34]``."""

    def __init__(self, channels=128, multi_step_neuron=None, **kwargs):
        super().__init__(channels, multi_step_neuron, **kwargs)


class MultiStepCIFAR10Net(_CIFAR10, _StaticInput):
    """Multi-step CIFAR-10 net: ``forward(x, T)`` with a static image ``[N, 3, 32, 32]``."""

    def __init__(self, channels=256, multi_step_neuron=None, **kwargs):
        super().__init__(channels, multi_step_neuron, **kwargs)


class MultiStepCIFAR10DVSNet(_CIFAR10DVS, _SequenceInput):
    """Multi-step CIFAR10-DVS net: ``forward(x)`` with ``[T, N, 2, 128, 128]``."""

    def __init__(self, channels=128, multi_step_neuron=None, **kwargs):
        super().__init__(channels, multi_step_neuron, **kwargs)


class MultiStepDVSGestureNet(_DVSGesture, _SequenceInput):
    """Multi-step DVS128 Gesture net: ``forward(x)`` with ``[T, N, 2, 128, 128]``."""

    def __init__(self, channels=128, multi_step_neuron=None, **kwargs):
        super().__init__(channels, multi_step_neuron, **kwargs)
