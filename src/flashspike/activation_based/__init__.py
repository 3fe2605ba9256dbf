"""SpikingJelly's ``activation_based`` API on flashspike's neurons, kernels and layers.

Port a SpikingJelly 2.x (or 0.0.0.0.14 activation_based) program by changing its import::

    from flashspike.activation_based import neuron, layer, functional, surrogate, encoding, monitor

Every stateful module has a step mode (``'s'``: one step ``[N, *]`` per call; ``'m'``: a sequence
``[T, N, *]`` per call), set per module or for a whole net with ``functional.set_step_mode(net, 'm')``.
The neurons are flashspike's own (:mod:`flashspike.neuron`), on the fused kernels in step mode 'm'.
"""

from . import base, encoding, functional, layer, model, monitor, neuron, surrogate

__all__ = ["base", "neuron", "layer", "functional", "surrogate", "encoding", "monitor", "model"]
