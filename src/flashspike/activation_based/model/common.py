"""What the step-mode zoo shares with flashspike's zoo (:mod:`flashspike.model`): the same model
classes, built from the step-mode layers and given the neuron as ``spiking_neuron``."""

from __future__ import annotations

import copy

from ...model import resnet_base
from .. import layer


class StepModeZoo:
    """Mixed into a :mod:`flashspike.model` class: its layers are the step-mode layers, which handle
    the sequence themselves, so the model keeps ``multi_step`` False in both step modes."""

    layers = layer
    neuron_argument = "spiking_neuron"


def own_copies(spiking_neuron):
    """A factory that gives each neuron its own copy of the keyword values (a surrogate module each)."""
    if not callable(spiking_neuron):
        return spiking_neuron  # the model's check names the argument

    def build(**kwargs):
        return spiking_neuron(**copy.deepcopy(kwargs))
    return build


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> layer.Conv2d:
    """A bias-free 3x3 step-mode convolution, padded by ``dilation``."""
    return resnet_base.conv3x3(in_planes, out_planes, stride, groups, dilation, layers=layer)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> layer.Conv2d:
    """A bias-free 1x1 step-mode convolution."""
    return resnet_base.conv1x1(in_planes, out_planes, stride, layers=layer)
