"""SpikingJelly's ``activation_based.model`` zoo on flashspike: nets built from step-mode layers and
a ``spiking_neuron`` class (``**kwargs`` go to each neuron), with SpikingJelly 2.0.0's builder
arguments and ``state_dict`` keys. Run a whole sequence with ``functional.set_step_mode(net, 'm')``.
Weights are never downloaded: ``pretrained=True`` raises NotImplementedError."""

from . import parametric_lif_net, sew_resnet, spike_driven_transformer, spikformer, spiking_resnet, spiking_vgg

__all__ = ["spiking_resnet", "sew_resnet", "spiking_vgg", "parametric_lif_net", "spikformer", "spike_driven_transformer"]
