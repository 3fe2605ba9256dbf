"""Neurons after a BatchNorm that keep no H for their backward.

In the usual block ``conv -> BatchNorm -> neuron``, autograd keeps, per element of the activation:
the BatchNorm's input (its backward needs it) and the neuron's H (the potential before each reset,
which a kernel backend's backward reads). :func:`recompute_h_after_batchnorm` switches a network's
BatchNorm layers to versions that mark their output as computable again from their input; a neuron
running a kernel backend ('cupy', 'triton') on such an output, or on a view of it, then keeps no H:
its backward normalizes the kept input again with the batch's statistics and runs the neuron's
forward again, which gives the same H, bit for bit (see :mod:`flashspike.backends.recompute`). The
activation memory of the pair drops by the size of H; the backward does one more BatchNorm forward
and neuron forward per layer.

Only BatchNorm layers that normalize with the batch's statistics mark their output (training mode,
or no running statistics), and only in eager mode with gradients on; anything else, and an output
changed in place before the neuron reads it, takes the ordinary path.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..backends.recompute import mark
from ..functional import switch_module_classes

__all__ = ["recompute_h_after_batchnorm", "RecomputableBatchNorm1d", "RecomputableBatchNorm2d",
           "RecomputableBatchNorm3d"]


def _normalize_again(x, weight, bias, *, eps: float, running_dtype):
    """The forward's BatchNorm output from its input: the same call with throwaway running statistics
    (the batch's statistics decide the output; running ones only take an update), so the same kernel."""
    running_mean = running_var = None
    if running_dtype is not None:
        channels = x.shape[1]
        running_mean = torch.zeros(channels, dtype=running_dtype, device=x.device)
        running_var = torch.ones(channels, dtype=running_dtype, device=x.device)
    return F.batch_norm(x, running_mean, running_var, weight, bias, True, 0.0, eps)


class _Recomputable:
    """The forward of the recomputable BatchNorm classes (mixed in before the torch class)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        output = super().forward(input)
        running = self.running_mean
        if (output.requires_grad and (self.training or running is None) and torch.is_grad_enabled()
                and not torch.compiler.is_compiling()):
            again = functools.partial(_normalize_again, eps=self.eps,
                                      running_dtype=None if running is None else running.dtype)
            mark(output, again, (input, self.weight, self.bias))
        return output

    def _get_name(self):
        return type(self).__mro__[2].__name__


class RecomputableBatchNorm1d(_Recomputable, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` whose output a kernel-backend neuron computes again instead of keeping H."""


class RecomputableBatchNorm2d(_Recomputable, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose output a kernel-backend neuron computes again instead of keeping H."""


class RecomputableBatchNorm3d(_Recomputable, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` whose output a kernel-backend neuron computes again instead of keeping H."""


_RECOMPUTABLE = {nn.BatchNorm1d: RecomputableBatchNorm1d, nn.BatchNorm2d: RecomputableBatchNorm2d,
                 nn.BatchNorm3d: RecomputableBatchNorm3d}


def recompute_h_after_batchnorm(net: nn.Module, enabled: bool = True) -> int:
    """Switch every ``nn.BatchNorm1d/2d/3d`` of ``net`` (exactly those classes, not subclasses) to its
    recomputable version, or back with ``enabled=False``; returns how many layers were switched.

    The switch changes the class only: parameters, buffers, hooks, ``state_dict`` keys and printed
    names stay, and every output and gradient is what the plain layers give.
    """
    return switch_module_classes(net, _RECOMPUTABLE, enabled)
