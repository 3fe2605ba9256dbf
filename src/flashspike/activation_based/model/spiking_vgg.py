"""Spiking VGGs (:mod:`flashspike.model.spiking_vgg`) of step-mode layers, with SpikingJelly 2.0.0's builders
``spiking_vgg{11,13,16,19}[_bn](pretrained=False, progress=True, [norm_layer=None,] spiking_neuron=None,
**kwargs)``. The classifier's dropouts are :class:`flashspike.activation_based.layer.Dropout` (one
mask per sequence)."""

from __future__ import annotations

from ...model import spiking_vgg as _zoo
from ...model.common import name_builder, refuse_pretrained
from ...model.spiking_vgg import cfgs
from .common import StepModeZoo, own_copies

__all__ = ["SpikingVGG", "spiking_vgg11", "spiking_vgg11_bn", "spiking_vgg13", "spiking_vgg13_bn", "spiking_vgg16",
           "spiking_vgg16_bn", "spiking_vgg19", "spiking_vgg19_bn", "cfgs"]


class SpikingVGG(StepModeZoo, _zoo.SpikingVGG):
    """Spiking VGG: ``[N, 3, H, W] -> [N, num_classes]`` in step mode 's', ``[T, N, 3, H, W] ->
    [T, N, num_classes]`` in 'm'; ``kwargs`` go to each neuron."""

    def __init__(self, cfg, batch_norm=False, norm_layer=None, num_classes=1000, init_weights=True,
                 spiking_neuron=None, **kwargs):
        super().__init__(cfg, batch_norm, norm_layer, num_classes, init_weights, own_copies(spiking_neuron),
                         **kwargs)


_DEPTH_TO_CFG = {11: "A", 13: "B", 16: "D", 19: "E"}


def _builders(depth):
    def make(batch_norm, pretrained, norm_layer, spiking_neuron, kwargs):
        refuse_pretrained(pretrained, f"vgg{depth}{'_bn' if batch_norm else ''}")
        return SpikingVGG(cfgs[_DEPTH_TO_CFG[depth]], batch_norm, norm_layer if batch_norm else None,
                          spiking_neuron=spiking_neuron, **kwargs)

    def plain(pretrained=False, progress=True, spiking_neuron=None, **kwargs):
        return make(False, pretrained, None, spiking_neuron, kwargs)

    def with_bn(pretrained=False, progress=True, norm_layer=None, spiking_neuron=None, **kwargs):
        return make(True, pretrained, norm_layer, spiking_neuron, kwargs)

    return (name_builder(plain, f"spiking_vgg{depth}", f"Spiking VGG-{depth} of step-mode layers."),
            name_builder(with_bn, f"spiking_vgg{depth}_bn",
                         f"Spiking VGG-{depth} of step-mode layers, a norm layer (default BatchNorm2d) after each "
                         "convolution."))


spiking_vgg11, spiking_vgg11_bn = _builders(11)
spiking_vgg13, spiking_vgg13_bn = _builders(13)
spiking_vgg16, spiking_vgg16_bn = _builders(16)
spiking_vgg19, spiking_vgg19_bn = _builders(19)
