"""Spiking VGGs: Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition" (https://arxiv.org/abs/1409.1556), in the torchvision layout, with a spiking neuron in
place of each ReLU.

``features``: 3x3 convolutions (each optionally followed by batch norm) with a neuron after each, and
2x2 max pools; ``avgpool`` to 7x7; ``classifier``: Linear(512·7·7, 4096), neuron, Dropout,
Linear(4096, 4096), neuron, Dropout, Linear(4096, num_classes). Names, arguments and ``state_dict``
keys are those of SpikingJelly's ``spiking_vgg`` module; ``pretrained=True`` is not supported (no
weights are downloaded).

Builders ``multi_step_spiking_vgg{11,13,16,19}[_bn](pretrained=False, progress=True, [norm_layer=None,]
T=None, multi_step_neuron=None, **kwargs)`` and ``spiking_vgg{11,13,16,19}[_bn](pretrained=False,
progress=True, [norm_layer=None,] single_step_neuron=None, **kwargs)``; ``kwargs`` holds the model's
options (num_classes, init_weights) and every other keyword goes to the neuron.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import functional
from ..neuron import BaseNode
from .common import StepModule, check_neuron, check_num_classes, check_T, name_builder, refuse_pretrained

__all__ = [
    "SpikingVGG", "MultiStepSpikingVGG",
    "multi_step_spiking_vgg11", "multi_step_spiking_vgg11_bn", "spiking_vgg11", "spiking_vgg11_bn",
    "multi_step_spiking_vgg13", "multi_step_spiking_vgg13_bn", "spiking_vgg13", "spiking_vgg13_bn",
    "multi_step_spiking_vgg16", "multi_step_spiking_vgg16_bn", "spiking_vgg16", "spiking_vgg16_bn",
    "multi_step_spiking_vgg19", "multi_step_spiking_vgg19_bn", "spiking_vgg19", "spiking_vgg19_bn",
    "sequential_forward",
]

# Output channels of each 3x3 convolution, "M" a 2x2 max pool: configurations A, B, D, E of the paper.
cfgs = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
_DEPTH_TO_CFG = {11: "A", 13: "B", 16: "D", 19: "E"}


def sequential_forward(sequential: nn.Sequential, x_seq: torch.Tensor) -> torch.Tensor:
    """The modules of ``sequential`` on a sequence ``[T, N, *]``: each neuron as it is (a multi-step
    node), every other module on the merged ``[T*N, *]`` batch."""
    if not isinstance(sequential, nn.Sequential):
        raise TypeError(f"sequential_forward expects an nn.Sequential, got {type(sequential).__name__}")
    for module in sequential:
        x_seq = module(x_seq) if isinstance(module, BaseNode) else functional.seq_to_ann_forward(x_seq, module)
    return x_seq


class SpikingVGG(StepModule):
    """Single-step spiking VGG: ``[N, 3, H, W] -> [N, num_classes]`` per call; ``kwargs`` go to the neuron."""

    def __init__(self, cfg, batch_norm=False, norm_layer=None, num_classes=1000, init_weights=True,
                 single_step_neuron=None, **kwargs):
        super().__init__()
        neuron = check_neuron(single_step_neuron, self.neuron_argument)
        check_num_classes(num_classes)
        kit = self.layers
        norm_layer = kit.BatchNorm2d if norm_layer is None else norm_layer
        features, neuron_at, in_channels = [], [], 3
        for v in cfg:
            if v == "M":
                features.append(kit.MaxPool2d(kernel_size=2, stride=2))
                continue
            features.append(kit.Conv2d(in_channels, v, kernel_size=3, padding=1))
            if batch_norm:
                features.append(norm_layer(v))
            neuron_at.append(len(features))
            features.append(neuron(**kwargs))
            in_channels = v
        self.features = nn.Sequential(*features)
        self.avgpool = kit.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            kit.Linear(512 * 7 * 7, 4096), neuron(**kwargs), kit.Dropout(),
            kit.Linear(4096, 4096), neuron(**kwargs), kit.Dropout(),
            kit.Linear(4096, num_classes),
        )
        # Where the neurons sit: everything else runs as stateless layers, several in one call.
        self._neuron_at = {"features": frozenset(neuron_at), "classifier": frozenset({1, 4})}
        if init_weights:
            self._initialize_weights()

    def _initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def _through(self, name: str, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``self.<name>[start:]``: neurons one by one, each run of stateless layers in one call."""
        sequential, neuron_at, run = getattr(self, name), self._neuron_at[name], []
        for i in range(start, len(sequential)):
            if i in neuron_at:
                x, run = (self.fire(sequential[i], x, run) if run else sequential[i](x)), []
            else:
                run.append(sequential[i])
        return self.stateless(x, run) if run else x

    def forward(self, x):
        """Single-step: ``[N, 3, H, W] -> [N, num_classes]``. Multi-step: ``[T, N, 3, H, W]`` (or
        ``[N, 3, H, W]`` repeated over ``self.T`` steps after the first convolution) ``-> [T, N, num_classes]``."""
        x = self._through("features", self.encode(x, self.features[0], getattr(self, "T", None)), start=1)
        x = self.stateless(x, self.avgpool).flatten(-3)
        return self._through("classifier", x)


class MultiStepSpikingVGG(SpikingVGG):
    """Multi-step spiking VGG: ``[T, N, 3, H, W]``, or ``[N, 3, H, W]`` repeated over ``T`` steps,
    ``-> [T, N, num_classes]``; ``kwargs`` go to the neuron."""

    multi_step = True

    def __init__(self, cfg, batch_norm=False, norm_layer=None, num_classes=1000, init_weights=True, T=None,
                 multi_step_neuron=None, **kwargs):
        super().__init__(cfg, batch_norm, norm_layer, num_classes, init_weights, multi_step_neuron, **kwargs)
        self.T = check_T(T)


def _vgg(model_class, depth, batch_norm, pretrained, norm_layer, neuron_kwargs, **model_kwargs):
    refuse_pretrained(pretrained, f"vgg{depth}{'_bn' if batch_norm else ''}")
    return model_class(cfgs[_DEPTH_TO_CFG[depth]], batch_norm, norm_layer if batch_norm else None,
                       **model_kwargs, **neuron_kwargs)


_WITH_BN = " with a norm layer (default BatchNorm2d) after each convolution"


def _single_step_builders(depth):
    def plain(pretrained=False, progress=True, single_step_neuron=None, **kwargs):
        return _vgg(SpikingVGG, depth, False, pretrained, None, kwargs, single_step_neuron=single_step_neuron)

    def with_bn(pretrained=False, progress=True, norm_layer=None, single_step_neuron=None, **kwargs):
        return _vgg(SpikingVGG, depth, True, pretrained, norm_layer, kwargs, single_step_neuron=single_step_neuron)

    return (name_builder(plain, f"spiking_vgg{depth}", f"Single-step spiking VGG-{depth}."),
            name_builder(with_bn, f"spiking_vgg{depth}_bn", f"Single-step spiking VGG-{depth}{_WITH_BN}."))


def _multi_step_builders(depth):
    def plain(pretrained=False, progress=True, T=None, multi_step_neuron=None, **kwargs):
        return _vgg(MultiStepSpikingVGG, depth, False, pretrained, None, kwargs, T=T,
                    multi_step_neuron=multi_step_neuron)

    def with_bn(pretrained=False, progress=True, norm_layer=None, T=None, multi_step_neuron=None, **kwargs):
        return _vgg(MultiStepSpikingVGG, depth, True, pretrained, norm_layer, kwargs, T=T,
                    multi_step_neuron=multi_step_neuron)

    return (name_builder(plain, f"multi_step_spiking_vgg{depth}", f"Multi-step spiking VGG-{depth}."),
            name_builder(with_bn, f"multi_step_spiking_vgg{depth}_bn", f"Multi-step spiking VGG-{depth}{_WITH_BN}."))


spiking_vgg11, spiking_vgg11_bn = _single_step_builders(11)
spiking_vgg13, spiking_vgg13_bn = _single_step_builders(13)
spiking_vgg16, spiking_vgg16_bn = _single_step_builders(16)
spiking_vgg19, spiking_vgg19_bn = _single_step_builders(19)
multi_step_spiking_vgg11, multi_step_spiking_vgg11_bn = _multi_step_builders(11)
multi_step_spiking_vgg13, multi_step_spiking_vgg13_bn = _multi_step_builders(13)
multi_step_spiking_vgg16, multi_step_spiking_vgg16_bn = _multi_step_builders(16)
multi_step_spiking_vgg19, multi_step_spiking_vgg19_bn = _multi_step_builders(19)
