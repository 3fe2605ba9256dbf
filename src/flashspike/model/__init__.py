"""SpikingJelly's model zoo on flashspike neurons: spiking ResNets, SEW ResNets, spiking VGGs and the
parametric-LIF nets, with SpikingJelly's builder names, arguments and ``state_dict`` keys.

Weights are never downloaded: ``pretrained=True`` raises NotImplementedError.
"""

from . import parametric_lif_net, sew_resnet, spiking_resnet, spiking_vgg

__all__ = ["spiking_resnet", "sew_resnet", "spiking_vgg", "parametric_lif_net"]
