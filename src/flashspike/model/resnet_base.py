"""The ResNet skeleton shared by the spiking ResNets and the SEW ResNets.

He et al., "Deep Residual Learning for Image Recognition" (https://arxiv.org/abs/1512.03385), in the
torchvision layout (stride on the 3x3 convolution of a bottleneck, "ResNet v1.5"), with a spiking
neuron after every batch norm. The attribute names (``conv1``, ``bn1``, ``sn1``, ``layer1.0.conv1``,
``downsample.0``, ``fc``...) are SpikingJelly's, so its checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from torch import nn

from ..image_conv import image_conv_class
from .common import StepModule, check_neuron, check_num_classes, check_T, refuse_pretrained


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1, *,
            layers=nn) -> nn.Conv2d:
    return layers.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                     bias=False, dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1, *, layers=nn) -> nn.Conv2d:
    return layers.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def basic_convs(inplanes, planes, stride, groups, base_width, dilation, layers=nn) -> list:
    """The two 3x3 convolutions of a basic block (ResNet-18/34)."""
    if groups != 1 or base_width != 64:
        raise ValueError(f"a basic block supports only groups=1 and base_width=64, got {groups} and {base_width}")
    if dilation > 1:
        raise NotImplementedError(f"a basic block does not support dilation > 1, got {dilation}")
    return [conv3x3(inplanes, planes, stride, layers=layers), conv3x3(planes, planes, layers=layers)]


def bottleneck_convs(inplanes, planes, stride, groups, base_width, dilation, expansion, layers=nn) -> list:
    """1x1 down to ``width``, 3x3 (grouped, strided), 1x1 up to ``planes * expansion`` (ResNet-50 and up)."""
    width = int(planes * (base_width / 64.0)) * groups
    return [conv1x1(inplanes, width, layers=layers), conv3x3(width, width, stride, groups, dilation, layers=layers),
            conv1x1(width, planes * expansion, layers=layers)]


class ResidualBlock(StepModule):
    """A residual branch of convolutions ``conv{i}``, each followed by ``bn{i}`` and a neuron ``sn{i}``,
    plus the shortcut ``downsample`` (None when the shapes already agree). Subclasses say how the
    branch and the shortcut are joined."""

    expansion = 1

    def __init__(self, convs: list, downsample, stride: int, norm_layer, neuron, neuron_kwargs: dict):
        super().__init__()
        norm_layer = self.layers.BatchNorm2d if norm_layer is None else norm_layer
        check_neuron(neuron, self.neuron_argument)
        for i, conv in enumerate(convs, 1):
            setattr(self, f"conv{i}", conv)
            setattr(self, f"bn{i}", norm_layer(conv.out_channels))
            setattr(self, f"sn{i}", neuron(**neuron_kwargs))
        self.depth = len(convs)
        self.downsample = downsample
        self.stride = stride

    @property
    def last_bn(self) -> nn.Module:
        return getattr(self, f"bn{self.depth}")

    def branch(self, x, fire_last: bool, add=None):
        """The residual branch; its last neuron fires only when ``fire_last`` (SEW fires before joining),
        its spikes added to ``add`` where given (see :meth:`StepModule.fire`)."""
        for i in range(1, self.depth + 1):
            layers = [getattr(self, f"conv{i}"), getattr(self, f"bn{i}")]
            if i < self.depth or fire_last:
                x = self.fire(getattr(self, f"sn{i}"), x, layers, add=add if i == self.depth else None)
            else:
                x = self.stateless(x, layers)
        return x


class ResNetBase(StepModule):
    """Stem (7x7 convolution, batch norm, neuron, max pool), four stages of residual blocks, global
    average pool and a linear classifier. Multi-step models return ``[T, N, num_classes]``, one output
    per time step (average over dim 0 for a rate), single-step ones ``[N, num_classes]``.
    """

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, groups=1, width_per_group=64,
                 replace_stride_with_dilation=None, norm_layer=None, T=None, neuron=None, block_args=(),
                 neuron_kwargs=None):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must hold the number of blocks of the 4 stages, got {layers!r}")
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(
                f"replace_stride_with_dilation must be None or hold 3 booleans, got {replace_stride_with_dilation!r}"
            )
        neuron_kwargs = neuron_kwargs or {}
        check_neuron(neuron, self.neuron_argument)
        check_num_classes(num_classes)
        self.T = check_T(T)
        layers_kit = self.layers
        self._norm_layer = layers_kit.BatchNorm2d if norm_layer is None else norm_layer
        self.inplanes = 64
        self.dilation = 1
        self.groups = groups
        self.base_width = width_per_group

        # (the stem reads the image: an RGB image as four channels per pixel where cuDNN is faster so)
        self.conv1 = image_conv_class(layers_kit.Conv2d)(3, self.inplanes, kernel_size=7, stride=2, padding=3,
                                                         bias=False)
        self.bn1 = self._norm_layer(self.inplanes)
        self.sn1 = neuron(**neuron_kwargs)
        self.maxpool = layers_kit.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stage = (block, neuron, block_args, neuron_kwargs)
        self.layer1 = self._make_layer(*stage, 64, layers[0])
        self.layer2 = self._make_layer(*stage, 128, layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(*stage, 256, layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(*stage, 512, layers[3], 2, replace_stride_with_dilation[2])
        self.avgpool = layers_kit.AdaptiveAvgPool2d((1, 1))
        self.fc = layers_kit.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            # Each residual branch starts at zero, so each block starts as its shortcut (Goyal et al. 2017).
            for m in self.modules():
                if isinstance(m, ResidualBlock):
                    nn.init.constant_(m.last_bn.weight, 0)

    def _make_layer(self, block, neuron, block_args, neuron_kwargs, planes, blocks, stride=1, dilate=False):
        norm_layer = self._norm_layer
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride, layers=self.layers),
                                       norm_layer(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation,
                        norm_layer, *block_args, neuron, **neuron_kwargs)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, 1, None, self.groups, self.base_width, self.dilation,
                                norm_layer, *block_args, neuron, **neuron_kwargs))
        return nn.Sequential(*layers)

    def forward(self, x):
        """Single-step: ``[N, 3, H, W] -> [N, num_classes]``. Multi-step: ``[T, N, 3, H, W]`` (or
        ``[N, 3, H, W]`` repeated over ``self.T`` steps) ``-> [T, N, num_classes]``."""
        x = self.fire(self.sn1, x, [self.conv1, self.bn1], encode_T=self.T)
        x = self.stateless(x, self.maxpool)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)  # a stage's input is freed once the stage returns, not when the last one does
        x = self.stateless(x, self.avgpool).flatten(-3)
        return self.stateless(x, self.fc)


# Depth and width of each architecture: block kind, blocks per stage, and the options it sets.
ARCHS = {
    "resnet18": ("basic", [2, 2, 2, 2], {}),
    "resnet34": ("basic", [3, 4, 6, 3], {}),
    "resnet50": ("bottleneck", [3, 4, 6, 3], {}),
    "resnet101": ("bottleneck", [3, 4, 23, 3], {}),
    "resnet152": ("bottleneck", [3, 8, 36, 3], {}),
    "resnext50_32x4d": ("bottleneck", [3, 4, 6, 3], {"groups": 32, "width_per_group": 4}),
    "resnext101_32x8d": ("bottleneck", [3, 4, 23, 3], {"groups": 32, "width_per_group": 8}),
    "wide_resnet50_2": ("bottleneck", [3, 4, 6, 3], {"width_per_group": 128}),
    "wide_resnet101_2": ("bottleneck", [3, 4, 23, 3], {"width_per_group": 128}),
}

TITLES = {
    "resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50", "resnet101": "ResNet-101",
    "resnet152": "ResNet-152", "resnext50_32x4d": "ResNeXt-50 32x4d", "resnext101_32x8d": "ResNeXt-101 32x8d",
    "wide_resnet50_2": "Wide ResNet-50-2", "wide_resnet101_2": "Wide ResNet-101-2",
}


def build(model_class, blocks: dict, arch: str, pretrained: bool, **kwargs):
    """``model_class`` for ``arch``, with ``blocks`` mapping 'basic' and 'bottleneck' to block classes.

    The architecture's own options (groups, width_per_group) override the caller's, as in torchvision.
    """
    refuse_pretrained(pretrained, arch)
    kind, layers, arch_options = ARCHS[arch]
    return model_class(blocks[kind], layers, **{**kwargs, **arch_options})
