"""The convolutional nets of Fang et al. (https://arxiv.org/abs/2007.05785) as SpikingJelly 2.0.0's
``parametric_lif_net`` builds them: one ``conv_fc`` sequence of step-mode layers (convolution, batch
norm, neuron, max pool blocks; then flatten, dropout, linear, neuron twice; then a voting layer that
averages groups of 10 outputs), so their ``state_dict`` keys are ``conv_fc.<i>.<name>``. Each takes
``channels``, ``spiking_neuron`` (a neuron class) and ``**kwargs`` for the neuron; run a sequence
``[T, N, C, H, W]`` after ``functional.set_step_mode(net, 'm')``."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .. import layer

__all__ = ["MNISTNet", "FashionMNISTNet", "NMNISTNet", "CIFAR10Net", "CIFAR10DVSNet", "DVSGestureNet"]


def _conv_block(in_channels: int, channels: int, neuron, bias: bool = False) -> list:
    return [layer.Conv2d(in_channels, channels, kernel_size=3, padding=1, bias=bias), layer.BatchNorm2d(channels),
            neuron()]


def _classifier(features: int, hidden: int, outputs: int, neuron) -> list:
    return [layer.Flatten(), layer.Dropout(0.5), layer.Linear(features, hidden), neuron(), layer.Dropout(0.5),
            layer.Linear(hidden, outputs), neuron(), layer.VotingLayer(10)]


def _neuron_factory(spiking_neuron, kwargs):
    if not callable(spiking_neuron):
        raise TypeError(f"spiking_neuron must be a neuron class (e.g. neuron.ParametricLIFNode), got {spiking_neuron!r}")
    return lambda: spiking_neuron(**copy.deepcopy(kwargs))


class _ConvFC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One step ``[N, C, H, W] -> [N, classes]`` (step mode 's') or ``[T, N, C, H, W] -> [T, N, classes]`` ('m')."""
        return self.conv_fc(x)


class MNISTNet(_ConvFC):
    """MNIST (1x28x28, 10 classes): two conv blocks with 2x2 pools, 2048 hidden units."""

    in_channels, side = 1, 7

    def __init__(self, channels=128, spiking_neuron=None, **kwargs):
        super().__init__()
        neuron = _neuron_factory(spiking_neuron, kwargs)
        blocks = []
        for i in range(2):
            blocks += _conv_block(self.in_channels if i == 0 else channels, channels, neuron) + [layer.MaxPool2d(2, 2)]
        self.conv_fc = nn.Sequential(*blocks, *_classifier(channels * self.side * self.side, 2048, 100, neuron))


class FashionMNISTNet(MNISTNet):
    """Fashion-MNIST: the MNIST net."""


class NMNISTNet(MNISTNet):
    """N-MNIST (2x34x34 event frames, 10 classes): the MNIST net on two input channels."""

    in_channels, side = 2, 8


class CIFAR10Net(_ConvFC):
    """CIFAR-10 (3x32x32, 10 classes): two stages of three conv blocks, each stage ending in a 2x2 pool."""

    def __init__(self, channels=256, spiking_neuron=None, **kwargs):
        super().__init__()
        neuron = _neuron_factory(spiking_neuron, kwargs)
        blocks = []
        for stage in range(2):
            for i in range(3):
                blocks += _conv_block(3 if not blocks else channels, channels, neuron)
            blocks.append(layer.MaxPool2d(2, 2))
        self.conv_fc = nn.Sequential(*blocks, *_classifier(channels * 8 * 8, 2048, 100, neuron))


class _DVSNet(_ConvFC):
    """``convs`` conv blocks on 2x128x128 event frames, each with a 2x2 pool."""

    convs: int
    side: int
    outputs: int

    def __init__(self, channels=128, spiking_neuron=None, **kwargs):
        super().__init__()
        neuron = _neuron_factory(spiking_neuron, kwargs)
        blocks = []
        for i in range(self.convs):
            blocks += _conv_block(2 if i == 0 else channels, channels, neuron) + [layer.MaxPool2d(2, 2)]
        self.conv_fc = nn.Sequential(*blocks, *_classifier(channels * self.side * self.side, 512, self.outputs,
                                                           neuron))


class CIFAR10DVSNet(_DVSNet):
    """CIFAR10-DVS (2x128x128, 10 classes): four conv blocks, 512 hidden units."""

    convs, side, outputs = 4, 8, 100


class DVSGestureNet(_DVSNet):
    """DVS128 Gesture (2x128x128, 11 classes): five conv blocks, 512 hidden units."""

    convs, side, outputs = 5, 4, 110
