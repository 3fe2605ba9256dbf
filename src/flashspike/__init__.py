"""flashspike: fast multi-step spiking neurons for PyTorch.

Port SpikingJelly-style code by changing its import::

    from flashspike import neuron, surrogate, layer, functional, encoding, monitor, rnn, cuda_utils
"""

import sys

from . import cuda_utils, encoding, functional, layer, memory, monitor, neuron, rnn, surrogate
from .backends import KNOWN_BACKENDS, BackendError
from .captured import CapturedStep
from .compiling import compile
from .memory import batchnorm_recompute, pooling, spike_bits

# The memory family's modules under their earlier names as well (``import flashspike.spike_bits``, a
# model pickled whole before they moved into flashspike.memory): the same module objects, not copies.
for _name in ("spike_bits", "pooling", "batchnorm_recompute"):
    sys.modules[f"{__name__}.{_name}"] = getattr(memory, _name)
del _name

__version__ = "0.1.0"
__all__ = ["neuron", "surrogate", "layer", "functional", "encoding", "monitor", "rnn", "cuda_utils", "spike_bits",
           "pooling", "batchnorm_recompute", "memory", "KNOWN_BACKENDS", "BackendError", "compile", "CapturedStep"]
