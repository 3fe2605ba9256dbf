"""Convolution outputs made again in the backward instead of kept.

In the block ``conv -> BatchNorm -> neuron`` with H recomputed (:mod:`.batchnorm_recompute`), the one
tensor of the activation's size that autograd keeps is the convolution's output: the BatchNorm's
input, which its backward and the neuron's read. The convolution itself keeps only its input and
weight. Where that input is small beside the output, as at a network's stem (three image channels
in, 64 out at half the resolution: the output is over five times the image's size), the output is
cheaper to compute again than to keep. :func:`recompute_convolution_outputs` makes it so:
autograd then keeps nothing of the output's size for the block, and the first backward to read the
output (the neuron's) computes it again from what the convolution keeps, once, for the BatchNorm's
backward too. The convolution runs with the same operands in the same autocast state: on the CPU its output
is the same, bit for bit; cuDNN may run it with another plan than the forward's (its plan cache keys on
the operands' alignment too), whose rounding can differ in the last bit, so on CUDA the gradients
agree with the plain network's to within that rounding.

The output is made again only for the layers that keep it through
:func:`flashspike.backends.recompute.remaking`: the recomputable BatchNorm layers and the kernel
backends' neurons (which, reading the output directly, compute H from the convolution again). Any
other layer that keeps it keeps it as before, and the step keeps what it kept. The switch adds a
forward hook to each convolution; eager mode only (compiled code keeps what the compiler decides), and
only where the convolution keeps its input as it is (a layer of :mod:`.spike_bits` keeping spikes in
bits does not: their unpacking would be paid twice).
"""

from __future__ import annotations

import torch
from torch import nn

from ..backends.recompute import mark

__all__ = ["recompute_convolution_outputs", "is_recomputing"]

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _mark_output(module: nn.Module, args: tuple, output) -> None:
    """Forward hook: mark a convolution's output as computable again from its input and weights."""
    if (not isinstance(output, torch.Tensor) or not torch.is_grad_enabled() or torch.compiler.is_compiling()
            or output.grad_fn is None or output.grad_fn.name() != "ConvolutionBackward0"):
        return  # no graph, or the convolution keeps its input otherwise (in bits): nothing to gain
    mark(output, module._conv_forward, (args[0], module.weight, module.bias))


def _hook_ids(module: nn.Module) -> list:
    return [key for key, hook in module._forward_hooks.items() if hook is _mark_output]


def is_recomputing(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution switched by :func:`recompute_convolution_outputs`."""
    return bool(_hook_ids(module))


def recompute_convolution_outputs(net: nn.Module, enabled: bool = True, *, first_only: bool = False) -> int:
    """Make every ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Conv3d`` of ``net`` (``net`` itself included,
    subclasses too) give an output that the backward computes again instead of keeping (see the
    module's text), or, with ``enabled=False``, keep it again; returns how many convolutions were
    switched.

    ``first_only``: only the first convolution of ``net`` (registered first, depth first): a network's
    stem, where the output is largest beside the input and the convolution cheapest to run again.
    Parameters, ``state_dict`` keys and outputs stay; the switch is a forward hook on each convolution.
    """
    switched = 0
    for module in net.modules():
        if not isinstance(module, _CONVOLUTIONS):
            continue
        ids = _hook_ids(module)
        if enabled and not ids:
            module.register_forward_hook(_mark_output)
            switched += 1
        elif not enabled and ids:
            for key in ids:
                del module._forward_hooks[key]
            switched += 1
        if first_only:
            break
    return switched
