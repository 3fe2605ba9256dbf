"""Keeping less for the backward pass: layers that save the same gradients in fewer bytes.

Each is a switch over a whole network that changes the class of some layers, or adds a forward hook
to them (their parameters, ``state_dict`` keys and printed names stay), and leaves every output and
gradient as it was:

- :mod:`.spike_bits`: ``nn.Conv2d`` and ``nn.Linear`` keep a spike input in one bit per element, a
  sum of spikes in a few (:func:`.spike_bits.store_spike_inputs_in_bits`; kernels in
  :mod:`.spike_bits_triton`);
- :mod:`.pooling`: ``nn.MaxPool2d`` keeps one byte per output instead of an int64 index
  (:func:`.pooling.store_pool_indices_in_bytes`; kernels in :mod:`.pooling_triton`);
- :mod:`.batchnorm_recompute`: a neuron after a BatchNorm keeps no H; its backward computes it again
  from the BatchNorm's kept input, normalizing it in the neuron's own kernel
  (:func:`.batchnorm_recompute.recompute_h_after_batchnorm`; kernel in :mod:`.batchnorm_triton`);
- :mod:`.conv_recompute`: a convolution's output (the BatchNorm's input above) is kept by no layer;
  the backward computes it again, once (:func:`.conv_recompute.recompute_convolution_outputs`; for a
  network's stem).

The family speaks to the neurons through public functions of :mod:`flashspike.backends`, and
reads nothing else of theirs: :func:`flashspike.backends.autograd.is_spike_output` (the neuron says
which autograd outputs are its 0/1 spikes) and :func:`flashspike.backends.recompute.mark` or
:func:`~flashspike.backends.recompute.mark_normalized` (a layer says its output can be computed again;
the neuron's backward then does so instead of keeping H), and
:func:`~flashspike.backends.recompute.remaking` (a layer keeps, in place of a marked input, how to
make it).
Those two stay beside the neurons because the neurons' autograd Function uses them: the neurons
never import this package. Triton is imported only when a kernel runs
(:func:`flashspike.optional_triton.optional_kernels`); without it, PyTorch operations or the plain
layers compute the same.

These modules are also reachable by their earlier names, ``flashspike.spike_bits``,
``flashspike.pooling`` and ``flashspike.batchnorm_recompute`` (the same module objects).
"""

from . import batchnorm_recompute, conv_recompute, pooling, spike_bits

__all__ = ["spike_bits", "pooling", "batchnorm_recompute", "conv_recompute"]
