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

from .resnet_base import ResidualBlock, ResNetBase, basic_convs, bottleneck_convs, build

__all__ = [
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
        convs = basic_convs(inplanes, planes, stride, groups, base_width, dilation)
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
        convs = bottleneck_convs(inplanes, planes, stride, groups, base_width, dilation, self.expansion)
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


def _single(arch, pretrained, single_step_neuron, kwargs):
    return build(SpikingResNet, _SINGLE, arch, pretrained, single_step_neuron=single_step_neuron, **kwargs)


def _multi(arch, pretrained, T, multi_step_neuron, kwargs):
    return build(MultiStepSpikingResNet, _MULTI, arch, pretrained, T=T, multi_step_neuron=multi_step_neuron,
                 **kwargs)


def spiking_resnet18(pretrained=False, progress=True, single_step_neuron=None, **kwargs):
    """Single-step spiking ResNet-18."""
    return _single("resnet18", pretrained, single_step_neuron, kwargs)


def spiking_resnet34(pretrained=False, progress=True, single_step_neuron=None, **kwargs):
    """Single-step spiking ResNet-34."""
    return _single("resnet34", pretrained, single_step_neuron, kwargs)


def spiking_resnet50(pretrained=False, progress=True, single_step_neuron=None, **kwargs):
    """Single-step spiking ResNet-50."""
    return _single("resnet50", pretrained, single_step_neuron, kwargs)


def spiking_resnet101(pretrained=False, progress=True, single_step_neuron=None, **kwargs):
    """Single-step spiking ResNet-101."""
    return _single("resnet101", pretrained, single_step_neuron, kwargs)


def spiking_resnet152(pretrained=False, progress=True, single_step_neuron=None, **kwargs):
    """Single-step spiking ResNet-152."""
    return _single("resnet152", pretrained, single_step_neuron, kwargs)


def spiking_resnext50_32x4d(pretrained=False, progress=True, single_step_neuron=None, **kwargs):
    """Single-step spiking ResNeXt-50 32x4d (Xie et al., https://arxiv.org/abs/1611.05431)."""
    return _single("resnext50_32x4d", pretrained, single_step_neuron, kwargs)


def spiking_resnext101_32x8d(pretrained=False, progress=True, single_step_neuron=None, **kwargs):
    """Single-step spiking ResNeXt-101 32x8d."""
    return _single("resnext101_32x8d", pretrained, single_step_neuron, kwargs)


def spiking_wide_resnet50_2(pretrained=False, progress=True, single_step_neuron=None, **kwargs):
    """Single-step spiking Wide ResNet-50-2: bottlenecks twice as wide (https://arxiv.org/abs/1605.07146)."""
    return _single("wide_resnet50_2", pretrained, single_step_neuron, kwargs)


def spiking_wide_resnet101_2(pretrained=False, progress=True, single_step_neuron=None, **kwargs):
    """Single-step spiking Wide ResNet-101-2."""
    return _single("wide_resnet101_2", pretrained, single_step_neuron, kwargs)


def multi_step_spiking_resnet18(pretrained=False, progress=True, T=None, multi_step_neuron=None, **kwargs):
    """Multi-step spiking ResNet-18; ``progress`` is accepted for compatibility and unused."""
    return _multi("resnet18", pretrained, T, multi_step_neuron, kwargs)


def multi_step_spiking_resnet34(pretrained=False, progress=True, T=None, multi_step_neuron=None, **kwargs):
    """Multi-step spiking ResNet-34."""
    return _multi("resnet34", pretrained, T, multi_step_neuron, kwargs)


def multi_step_spiking_resnet50(pretrained=False, progress=True, T=None, multi_step_neuron=None, **kwargs):
    """Multi-step spiking ResNet-50."""
    return _multi("resnet50", pretrained, T, multi_step_neuron, kwargs)


def multi_step_spiking_resnet101(pretrained=False, progress=True, T=None, multi_step_neuron=None, **kwargs):
    """Multi-step spiking ResNet-101."""
    return _multi("resnet101", pretrained, T, multi_step_neuron, kwargs)


def multi_step_spiking_resnet152(pretrained=False, progress=True, T=None, multi_step_neuron=None, **kwargs):
    """Multi-step spiking ResNet-152."""
    return _multi("resnet152", pretrained, T, multi_step_neuron, kwargs)


def multi_step_spiking_resnext50_32x4d(pretrained=False, progress=True, T=None, multi_step_neuron=None, **kwargs):
    """Multi-step spiking ResNeXt-50 32x4d."""
    return _multi("resnext50_32x4d", pretrained, T, multi_step_neuron, kwargs)


def multi_step_spiking_resnext101_32x8d(pretrained=False, progress=True, T=None, multi_step_neuron=None, **kwargs):
    """Multi-step spiking ResNeXt-101 32x8d."""
    return _multi("resnext101_32x8d", pretrained, T, multi_step_neuron, kwargs)


def multi_step_spiking_wide_resnet50_2(pretrained=False, progress=True, T=None, multi_step_neuron=None, **kwargs):
    """Multi-step spiking Wide ResNet-50-2."""
    return _multi("wide_resnet50_2", pretrained, T, multi_step_neuron, kwargs)


def multi_step_spiking_wide_resnet101_2(pretrained=False, progress=True, T=None, multi_step_neuron=None, **kwargs):
    """Multi-step spiking Wide ResNet-101-2."""
    return _multi("wide_resnet101_2", pretrained, T, multi_step_neuron, kwargs)
