"""SpikingJelly's model zoo on flashspike neurons: spiking ResNets, SEW ResNets, spiking VGGs and the
parametric-LIF nets (SpikingJelly 0.0.0.0.14's), Spikformer and the Spike-Driven Transformer
(SpikingJelly 2.x's), with SpikingJelly's builder names, arguments and ``state_dict`` keys; and the
convolutional SNN of SpikingJelly's Fashion-MNIST tutorial (``csnn.CSNN``), which the example trains.

Weights are never downloaded: ``pretrained=True`` raises NotImplementedError.
"""

from . import (csnn, parametric_lif_net, sew_resnet, spike_driven_transformer, spikformer, spiking_resnet,
               spiking_vgg)

__all__ = ["spiking_resnet", "sew_resnet", "spiking_vgg", "parametric_lif_net", "spikformer",
           "spike_driven_transformer", "csnn"]
