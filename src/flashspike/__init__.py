"""flashspike: fast multi-step spiking neurons for PyTorch.

Port SpikingJelly-style code by changing its import::

    from flashspike import neuron, surrogate, layer, functional, encoding, monitor, rnn, cuda_utils
"""

from . import (batchnorm_recompute, cuda_utils, encoding, functional, layer, monitor, neuron, pooling, rnn,
               spike_bits, surrogate)
from .backends import KNOWN_BACKENDS, BackendError
from .captured import CapturedStep
from .compiling import compile

__version__ = "0.1.0"
__all__ = ["neuron", "surrogate", "layer", "functional", "encoding", "monitor", "rnn", "cuda_utils", "spike_bits",
           "pooling", "batchnorm_recompute", "KNOWN_BACKENDS", "BackendError", "compile", "CapturedStep"]
