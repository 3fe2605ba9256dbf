"""Spiking ResNets (:mod:`flashspike.model.spiking_resnet`) of step-mode layers, with SpikingJelly 2.0.0's
builders ``spiking_<arch>(pretrained=False, progress=True, spiking_neuron=None, **kwargs)``."""

from __future__ import annotations

from ...model import spiking_resnet as _zoo
from ...model.common import name_builder
from ...model.resnet_base import TITLES, build
from .common import StepModeZoo, conv1x1, conv3x3, own_copies

__all__ = ["SpikingResNet", "spiking_resnet18", "spiking_resnet34", "spiking_resnet50", "spiking_resnet101",
           "spiking_resnet152", "spiking_resnext50_32x4d", "spiking_resnext101_32x8d", "spiking_wide_resnet50_2",
           "spiking_wide_resnet101_2", "conv3x3", "conv1x1"]


class BasicBlock(StepModeZoo, _zoo.BasicBlock):
    """Two 3x3 convolutions, the shortcut added before the last neuron (ResNet-18/34)."""

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None, spiking_neuron=None, **kwargs):
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, dilation, norm_layer,
                         spiking_neuron, **kwargs)


class Bottleneck(StepModeZoo, _zoo.Bottleneck):
    """1x1, 3x3, 1x1 convolutions, the shortcut added before the last neuron (ResNet-50 and deeper)."""

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None, spiking_neuron=None, **kwargs):
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, dilation, norm_layer,
                         spiking_neuron, **kwargs)


class SpikingResNet(StepModeZoo, _zoo.SpikingResNet):
    """Spiking ResNet: ``[N, 3, H, W] -> [N, num_classes]`` in step mode 's', ``[T, N, 3, H, W] ->
    [T, N, num_classes]`` in 'm'; ``kwargs`` go to each neuron."""

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, groups=1, width_per_group=64,
                 replace_stride_with_dilation=None, norm_layer=None, spiking_neuron=None, **kwargs):
        super().__init__(block, layers, num_classes, zero_init_residual, groups, width_per_group,
                         replace_stride_with_dilation, norm_layer, own_copies(spiking_neuron), **kwargs)


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _builder(arch):
    def builder(pretrained=False, progress=True, spiking_neuron=None, **kwargs):
        return build(SpikingResNet, _BLOCKS, arch, pretrained, spiking_neuron=spiking_neuron, **kwargs)

    return name_builder(builder, f"spiking_{arch}", f"Spiking {TITLES[arch]} of step-mode layers.")


spiking_resnet18 = _builder("resnet18")
spiking_resnet34 = _builder("resnet34")
spiking_resnet50 = _builder("resnet50")
spiking_resnet101 = _builder("resnet101")
spiking_resnet152 = _builder("resnet152")
spiking_resnext50_32x4d = _builder("resnext50_32x4d")
spiking_resnext101_32x8d = _builder("resnext101_32x8d")
spiking_wide_resnet50_2 = _builder("wide_resnet50_2")
spiking_wide_resnet101_2 = _builder("wide_resnet101_2")
