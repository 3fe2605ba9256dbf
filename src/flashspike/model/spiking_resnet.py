"""Spiking ResNets: the ResNet of He et al. with a spiking neuron in place of each ReLU.

Block: branch = BN(conv(... neuron(BN(conv(x))))), out = neuron(branch + shortcut(x)): the join adds
real-valued currents and the last neuron fires on their sum. Names, arguments and ``state_dict`` keys
are those of SpikingJelly's ``spiking_resnet`` module; ``pretrained=True`` is not supported (no
weights are downloaded), so every builder takes ``pretrained=False``.

Builders ``multi_step_spiking_<arch>(pretrained=False, progress=True, T=None, multi_step_neuron=None,
**kwargs)`` and ``spiking_<arch>(pretrained=False, progress=True, single_step_neuron=None, **kwargs)``
for ``arch`` in resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d, wide_resnet50_2,
wide_resnet101_2. ``kwargs`` holds the model's options (num_classes, zero_init_residual, groups,
width_per_group, replace_stride_with_dilation, norm_layer); every other keyword goes to the neuron,
e.g. ``surrogate_function=surrogate.ATan(), detach_reset=True, backend='cupy'``.
"""

from __future__ import annotations

from .common import name_builder
from .resnet_base import TITLES, ResidualBlock, ResNetBase, basic_convs, bottleneck_convs, build, conv1x1, conv3x3

__all__ = [
    "conv3x3", "conv1x1",
    "SpikingResNet", "spiking_resnet18", "spiking_resnet34", "spiking_resnet50", "spiking_resnet101",
    "spiking_resnet152", "spiking_resnext50_32x4d", "spiking_resnext101_32x8d", "spiking_wide_resnet50_2",
    "spiking_wide_resnet101_2",
    "MultiStepSpikingResNet", "multi_step_spiking_resnet18", "multi_step_spiking_resnet34",
    "multi_step_spiking_resnet50", "multi_step_spiking_resnet101", "multi_step_spiking_resnet152",
    "multi_step_spiking_resnext50_32x4d", "multi_step_spiking_resnext101_32x8d",
    "multi_step_spiking_wide_resnet50_2", "multi_step_spiking_wide_resnet101_2",
]


class _AddThenFire(ResidualBlock):
    def forward(self, x):
        out = self.branch(x, fire_last=False)
        shortcut = x if self.downsample is None else self.stateless(x, self.downsample)
        return getattr(self, f"sn{self.depth}")(out + shortcut)


class BasicBlock(_AddThenFire):
    """Two 3x3 convolutions (ResNet-18/34), one time step per call."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None, single_step_neuron=None, **kwargs):
        convs = basic_convs(inplanes, planes, stride, groups, base_width, dilation, self.layers)
        super().__init__(convs, downsample, stride, norm_layer, single_step_neuron, kwargs)


class MultiStepBasicBlock(BasicBlock):
    """:class:`BasicBlock` on whole sequences ``[T, N, C, H, W]``."""

    multi_step = True

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None, multi_step_neuron=None, **kwargs):
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, dilation, norm_layer,
                         multi_step_neuron, **kwargs)


class Bottleneck(_AddThenFire):
    """1x1, 3x3, 1x1 convolutions (ResNet-50 and deeper), one time step per call."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None, single_step_neuron=None, **kwargs):
        convs = bottleneck_convs(inplanes, planes, stride, groups, base_width, dilation, self.expansion, self.layers)
        super().__init__(convs, downsample, stride, norm_layer, single_step_neuron, kwargs)


class MultiStepBottleneck(Bottleneck):
    """:class:`Bottleneck` on whole sequences ``[T, N, C, H, W]``."""

    multi_step = True

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None, multi_step_neuron=None, **kwargs):
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, dilation, norm_layer,
                         multi_step_neuron, **kwargs)


class SpikingResNet(ResNetBase):
    """Single-step spiking ResNet: ``[N, 3, H, W] -> [N, num_classes]`` per call; ``kwargs`` go to the neuron."""

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, groups=1, width_per_group=64,
                 replace_stride_with_dilation=None, norm_layer=None, single_step_neuron=None, **kwargs):
        super().__init__(block, layers, num_classes, zero_init_residual, groups, width_per_group,
                         replace_stride_with_dilation, norm_layer, None, single_step_neuron, (), kwargs)


class MultiStepSpikingResNet(ResNetBase):
    """Multi-step spiking ResNet: ``[T, N, 3, H, W]``, or ``[N, 3, H, W]`` repeated over ``T`` steps,
    ``-> [T, N, num_classes]``; ``kwargs`` go to the neuron."""

    multi_step = True

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, groups=1, width_per_group=64,
                 replace_stride_with_dilation=None, norm_layer=None, T=None, multi_step_neuron=None, **kwargs):
        super().__init__(block, layers, num_classes, zero_init_residual, groups, width_per_group,
                         replace_stride_with_dilation, norm_layer, T, multi_step_neuron, (), kwargs)


_SINGLE = {"basic": BasicBlock, "bottleneck": Bottleneck}
_MULTI = {"basic": MultiStepBasicBlock, "bottleneck": MultiStepBottleneck}


def _single_step_builder(arch):
    def builder(pretrained=False, progress=True, single_step_neuron=None, **kwargs):
        return build(SpikingResNet, _SINGLE, arch, pretrained, single_step_neuron=single_step_neuron, **kwargs)

    return name_builder(builder, f"spiking_{arch}", f"Single-step spiking {TITLES[arch]}.")


def _multi_step_builder(arch):
    def builder(pretrained=False, progress=True, T=None, multi_step_neuron=None, **kwargs):
        return build(MultiStepSpikingResNet, _MULTI, arch, pretrained, T=T, multi_step_neuron=multi_step_neuron,
                     **kwargs)

    return name_builder(builder, f"multi_step_spiking_{arch}", f"Multi-step spiking {TITLES[arch]}.")


spiking_resnet18 = _single_step_builder("resnet18")
spiking_resnet34 = _single_step_builder("resnet34")
spiking_resnet50 = _single_step_builder("resnet50")
spiking_resnet101 = _single_step_builder("resnet101")
spiking_resnet152 = _single_step_builder("resnet152")
spiking_resnext50_32x4d = _single_step_builder("resnext50_32x4d")
spiking_resnext101_32x8d = _single_step_builder("resnext101_32x8d")
spiking_wide_resnet50_2 = _single_step_builder("wide_resnet50_2")
spiking_wide_resnet101_2 = _single_step_builder("wide_resnet101_2")
multi_step_spiking_resnet18 = _multi_step_builder("resnet18")
multi_step_spiking_resnet34 = _multi_step_builder("resnet34")
multi_step_spiking_resnet50 = _multi_step_builder("resnet50")
multi_step_spiking_resnet101 = _multi_step_builder("resnet101")
multi_step_spiking_resnet152 = _multi_step_builder("resnet152")
multi_step_spiking_resnext50_32x4d = _multi_step_builder("resnext50_32x4d")
multi_step_spiking_resnext101_32x8d = _multi_step_builder("resnext101_32x8d")
multi_step_spiking_wide_resnet50_2 = _multi_step_builder("wide_resnet50_2")
multi_step_spiking_wide_resnet101_2 = _multi_step_builder("wide_resnet101_2")
