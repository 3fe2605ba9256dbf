"""Spike-element-wise (SEW) ResNets: Fang et al., "Deep Residual Learning in Spiking Neural Networks"
(https://arxiv.org/abs/2102.04159).

Block: the branch ends with a neuron, so it outputs spikes A; the shortcut gives spikes S (the input,
or neuron(BN(conv1x1(x))) when it downsamples); the block returns g(S, A) with the connect function
``cnf``: 'ADD' S + A, 'AND' S·A, 'IAND' S·(1 − A). Names, arguments and ``state_dict`` keys are
those of SpikingJelly's ``sew_resnet`` module; ``pretrained=True`` is not supported (no weights are
downloaded).

Builders ``multi_step_sew_<arch>(pretrained=False, progress=True, T=None, cnf=None,
multi_step_neuron=None, **kwargs)`` and ``sew_<arch>(pretrained=False, progress=True, cnf=None,
single_step_neuron=None, **kwargs)`` for the same architectures as :mod:`.spiking_resnet`.

SpikingJelly 0.0.0.0.14's single-step bottleneck joins as g(A, S) instead, which differs for 'IAND';
here every block computes g(S, A) as the paper states (its multi-step blocks agree).
"""

from __future__ import annotations

import torch

from ..base import called_plainly
from .common import name_builder
from .resnet_base import TITLES, ResidualBlock, ResNetBase, basic_convs, bottleneck_convs, build, conv1x1, conv3x3

__all__ = [
    "conv3x3", "conv1x1",
    "SEWResNet", "sew_resnet18", "sew_resnet34", "sew_resnet50", "sew_resnet101", "sew_resnet152",
    "sew_resnext50_32x4d", "sew_resnext101_32x8d", "sew_wide_resnet50_2", "sew_wide_resnet101_2",
    "MultiStepSEWResNet", "multi_step_sew_resnet18", "multi_step_sew_resnet34", "multi_step_sew_resnet50",
    "multi_step_sew_resnet101", "multi_step_sew_resnet152", "multi_step_sew_resnext50_32x4d",
    "multi_step_sew_resnext101_32x8d", "multi_step_sew_wide_resnet50_2", "multi_step_sew_wide_resnet101_2",
]

CONNECT_FUNCTIONS = ("ADD", "AND", "IAND")


def sew_function(x: torch.Tensor, y: torch.Tensor, cnf: str) -> torch.Tensor:
    """The connect function g(x, y): 'ADD' x + y, 'AND' x·y, 'IAND' x·(1 − y)."""
    if cnf == "ADD":
        return x + y
    if cnf == "AND":
        return x * y
    if cnf == "IAND":
        return x * (1.0 - y)
    raise ValueError(f"cnf must be one of {CONNECT_FUNCTIONS}, got {cnf!r}")


def _check_cnf(cnf) -> str:
    if cnf not in CONNECT_FUNCTIONS:
        raise ValueError(f"cnf must be one of {CONNECT_FUNCTIONS}, got {cnf!r}")
    return cnf


class _FireThenConnect(ResidualBlock):
    # g(S, A), the paper's order; SpikingJelly 2.x's step-mode bottleneck joins g(A, S) (they differ for 'IAND').
    shortcut_first = True

    def __init__(self, convs, downsample, stride, norm_layer, cnf, neuron, neuron_kwargs):
        super().__init__(convs, downsample, stride, norm_layer, neuron, neuron_kwargs)
        if downsample is not None:
            self.downsample_sn = neuron(**neuron_kwargs)
        self.cnf = _check_cnf(cnf)

    def forward(self, x):
        # ADD: the branch's last neuron adds its spikes to the shortcut as it fires, so the shortcut comes
        # first; a downsampling shortcut then fires before the branch's last neuron, which hooks would see
        # (SpikingJelly's order is the branch, then the shortcut): only where none can
        if self.cnf == "ADD" and (self.downsample is None or all(map(called_plainly, self.modules()))):
            shortcut = x if self.downsample is None else self.fire(self.downsample_sn, x, self.downsample)
            return self.branch(x, fire_last=True, add=shortcut)
        out = self.branch(x, fire_last=True)
        shortcut = x if self.downsample is None else self.fire(self.downsample_sn, x, self.downsample)
        return sew_function(shortcut, out, self.cnf) if self.shortcut_first else sew_function(out, shortcut, self.cnf)

    def extra_repr(self) -> str:
        return f"cnf={self.cnf}"


class BasicBlock(_FireThenConnect):
    """Two 3x3 convolutions (SEW ResNet-18/34), one time step per call."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None, cnf=None, single_step_neuron=None, **kwargs):
        convs = basic_convs(inplanes, planes, stride, groups, base_width, dilation, self.layers)
        super().__init__(convs, downsample, stride, norm_layer, cnf, single_step_neuron, kwargs)


class MultiStepBasicBlock(BasicBlock):
    """:class:`BasicBlock` on whole sequences ``[T, N, C, H, W]``."""

    multi_step = True

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None, cnf=None, multi_step_neuron=None, **kwargs):
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, dilation, norm_layer, cnf,
                         multi_step_neuron, **kwargs)


class Bottleneck(_FireThenConnect):
    """1x1, 3x3, 1x1 convolutions (SEW ResNet-50 and deeper), one time step per call."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None, cnf=None, single_step_neuron=None, **kwargs):
        convs = bottleneck_convs(inplanes, planes, stride, groups, base_width, dilation, self.expansion, self.layers)
        super().__init__(convs, downsample, stride, norm_layer, cnf, single_step_neuron, kwargs)


class MultiStepBottleneck(Bottleneck):
    """:class:`Bottleneck` on whole sequences ``[T, N, C, H, W]``."""

    multi_step = True

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None, cnf=None, multi_step_neuron=None, **kwargs):
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, dilation, norm_layer, cnf,
                         multi_step_neuron, **kwargs)


class SEWResNet(ResNetBase):
    """Single-step SEW ResNet: ``[N, 3, H, W] -> [N, num_classes]`` per call; ``kwargs`` go to the neuron."""

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, groups=1, width_per_group=64,
                 replace_stride_with_dilation=None, norm_layer=None, cnf=None, single_step_neuron=None, **kwargs):
        super().__init__(block, layers, num_classes, zero_init_residual, groups, width_per_group,
                         replace_stride_with_dilation, norm_layer, None, single_step_neuron, (_check_cnf(cnf),),
                         kwargs)


class MultiStepSEWResNet(ResNetBase):
    """Multi-step SEW ResNet: ``[T, N, 3, H, W]``, or ``[N, 3, H, W]`` repeated over ``T`` steps,
    ``-> [T, N, num_classes]``; ``kwargs`` go to the neuron."""

    multi_step = True

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, groups=1, width_per_group=64,
                 replace_stride_with_dilation=None, norm_layer=None, T=None, cnf=None, multi_step_neuron=None,
                 **kwargs):
        super().__init__(block, layers, num_classes, zero_init_residual, groups, width_per_group,
                         replace_stride_with_dilation, norm_layer, T, multi_step_neuron, (_check_cnf(cnf),), kwargs)


_SINGLE = {"basic": BasicBlock, "bottleneck": Bottleneck}
_MULTI = {"basic": MultiStepBasicBlock, "bottleneck": MultiStepBottleneck}


def _single_step_builder(arch):
    def builder(pretrained=False, progress=True, cnf=None, single_step_neuron=None, **kwargs):
        return build(SEWResNet, _SINGLE, arch, pretrained, cnf=cnf, single_step_neuron=single_step_neuron, **kwargs)

    return name_builder(builder, f"sew_{arch}", f"Single-step SEW {TITLES[arch]}; cnf is 'ADD', 'AND' or 'IAND'.")


def _multi_step_builder(arch):
    def builder(pretrained=False, progress=True, T=None, cnf=None, multi_step_neuron=None, **kwargs):
        return build(MultiStepSEWResNet, _MULTI, arch, pretrained, T=T, cnf=cnf, multi_step_neuron=multi_step_neuron,
                     **kwargs)

    return name_builder(builder, f"multi_step_sew_{arch}",
                        f"Multi-step SEW {TITLES[arch]}; cnf is 'ADD', 'AND' or 'IAND'.")


sew_resnet18 = _single_step_builder("resnet18")
sew_resnet34 = _single_step_builder("resnet34")
sew_resnet50 = _single_step_builder("resnet50")
sew_resnet101 = _single_step_builder("resnet101")
sew_resnet152 = _single_step_builder("resnet152")
sew_resnext50_32x4d = _single_step_builder("resnext50_32x4d")
sew_resnext101_32x8d = _single_step_builder("resnext101_32x8d")
sew_wide_resnet50_2 = _single_step_builder("wide_resnet50_2")
sew_wide_resnet101_2 = _single_step_builder("wide_resnet101_2")
multi_step_sew_resnet18 = _multi_step_builder("resnet18")
multi_step_sew_resnet34 = _multi_step_builder("resnet34")
multi_step_sew_resnet50 = _multi_step_builder("resnet50")
multi_step_sew_resnet101 = _multi_step_builder("resnet101")
multi_step_sew_resnet152 = _multi_step_builder("resnet152")
multi_step_sew_resnext50_32x4d = _multi_step_builder("resnext50_32x4d")
multi_step_sew_resnext101_32x8d = _multi_step_builder("resnext101_32x8d")
multi_step_sew_wide_resnet50_2 = _multi_step_builder("wide_resnet50_2")
multi_step_sew_wide_resnet101_2 = _multi_step_builder("wide_resnet101_2")
