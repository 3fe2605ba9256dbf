"""SEW ResNets (:mod:`flashspike.model.sew_resnet`) of step-mode layers, with SpikingJelly 2.0.0's builders
``sew_<arch>(pretrained=False, progress=True, cnf=None, spiking_neuron=None, **kwargs)``.

As in SpikingJelly 2.0.0, the basic block joins g(S, A) (shortcut first) and the bottleneck g(A, S)
(they differ for ``cnf='IAND'``)."""

from __future__ import annotations

from ...model import sew_resnet as _zoo
from ...model.common import name_builder
from ...model.resnet_base import TITLES, build
from ...model.sew_resnet import sew_function
from .common import StepModeZoo, conv1x1, conv3x3, own_copies

__all__ = ["SEWResNet", "sew_resnet18", "sew_resnet34", "sew_resnet50", "sew_resnet101", "sew_resnet152",
           "sew_resnext50_32x4d", "sew_resnext101_32x8d", "sew_wide_resnet50_2", "sew_wide_resnet101_2",
           "sew_function", "conv3x3", "conv1x1"]


class BasicBlock(StepModeZoo, _zoo.BasicBlock):
    """Two 3x3 convolutions, each with a neuron; joins the shortcut's spikes S and the branch's A as g(S, A)."""

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None, cnf=None, spiking_neuron=None, **kwargs):
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, dilation, norm_layer, cnf,
                         spiking_neuron, **kwargs)


class Bottleneck(StepModeZoo, _zoo.Bottleneck):
    """1x1, 3x3, 1x1 convolutions, each with a neuron; joins as g(A, S), as SpikingJelly 2.0.0 does."""

    shortcut_first = False

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None, cnf=None, spiking_neuron=None, **kwargs):
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, dilation, norm_layer, cnf,
                         spiking_neuron, **kwargs)


class SEWResNet(StepModeZoo, _zoo.SEWResNet):
    """SEW ResNet: ``[N, 3, H, W] -> [N, num_classes]`` in step mode 's', ``[T, N, 3, H, W] ->
    [T, N, num_classes]`` in 'm'; ``cnf`` is 'ADD', 'AND' or 'IAND'; ``kwargs`` go to each neuron."""

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, groups=1, width_per_group=64,
                 replace_stride_with_dilation=None, norm_layer=None, cnf=None, spiking_neuron=None, **kwargs):
        super().__init__(block, layers, num_classes, zero_init_residual, groups, width_per_group,
                         replace_stride_with_dilation, norm_layer, cnf, own_copies(spiking_neuron), **kwargs)


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _builder(arch):
    def builder(pretrained=False, progress=True, cnf=None, spiking_neuron=None, **kwargs):
        return build(SEWResNet, _BLOCKS, arch, pretrained, cnf=cnf, spiking_neuron=spiking_neuron, **kwargs)

    return name_builder(builder, f"sew_{arch}", f"SEW {TITLES[arch]} of step-mode layers; cnf is 'ADD', 'AND' or "
                                                "'IAND'.")


sew_resnet18 = _builder("resnet18")
sew_resnet34 = _builder("resnet34")
sew_resnet50 = _builder("resnet50")
sew_resnet101 = _builder("resnet101")
sew_resnet152 = _builder("resnet152")
sew_resnext50_32x4d = _builder("resnext50_32x4d")
sew_resnext101_32x8d = _builder("resnext101_32x8d")
sew_wide_resnet50_2 = _builder("wide_resnet50_2")
sew_wide_resnet101_2 = _builder("wide_resnet101_2")
