"""Neurons after a BatchNorm that keep no H for their backward.

In the usual block ``conv -> BatchNorm -> neuron``, autograd keeps, per element of the activation:
the BatchNorm's input (its backward needs it) and the neuron's H (the potential before each reset,
which a kernel backend's backward reads). :func:`recompute_h_after_batchnorm` switches a network's
BatchNorm layers to versions whose output a neuron running a kernel backend ('cupy', 'triton') can
compute again from the BatchNorm's kept input; such a neuron, reading that output or a view of it,
then keeps no H. The activation memory of the pair drops by the size of H.

Where Triton runs the tensors (CUDA), a switched layer normalizes with the batch's statistics as one
per-channel multiply-add, ``y = x * scale[c] + shift[c]`` with ``scale = weight / sqrt(var + eps)`` and
``shift = bias - mean * scale``, a fused multiply-add in float32 rounded once to x's dtype (a Triton
kernel), and the gradients are PyTorch's batch-norm backward with the same statistics (its formulas in
Triton kernels where the channels are adjacent in memory, where PyTorch's are slow). The
neuron's backward kernel then runs the forward first from the kept input, normalizing it as it loads
it, and writes H into the memory of the input gradient, where its walk back in time reads it: the
same input, so the same H, bit for bit, with no memory of its own, at the cost of reading x instead
of H, and nothing computed twice. Its values are the plain layer's up to the rounding of that multiply-add (PyTorch's
kernels order the arithmetic differently), and its running statistics follow the same update.

Elsewhere (no Triton, float64) a switched layer computes what the plain layer computes and marks
its output as computable again: the neuron's backward normalizes the kept input again with the
batch's statistics and runs the neuron's forward again, which gives the same H, bit for bit (see
:mod:`flashspike.backends.recompute`).

Only BatchNorm layers that normalize with the batch's statistics are switched in effect (training
mode, or no running statistics), and only in eager mode with gradients on; anything else, and an
output changed in place before the neuron reads it, takes the ordinary path.

Where the caller vouches that the BatchNorm's output goes to one neuron and nothing else
(:func:`normalized_in_neuron`; the model zoo's ``conv -> BatchNorm -> neuron`` blocks do), the output
is not even written: the neuron's forward kernel fires from the BatchNorm's input, normalizing it as
it loads it, as its backward does. That saves the normalization's pass over memory (a write and a
read of the activation); anything else that reads the output through a flashspike neuron has it
written first (:func:`flashspike.backends.recompute.fill_unwritten`).

The Triton path launches six kernels per layer and step where cuDNN's batch norm launches two. In a
step captured as one CUDA graph (:class:`flashspike.CapturedStep`) launches cost nothing; in an eager
step each costs host time, which a host-bound step (most are, on small inputs) pays in full.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..backends.recompute import mark, mark_normalized, remaking
from ..base import ForOneCall, called_plainly, takes_fused_call
from ..functional import switch_module_classes
from ..optional_triton import optional_kernels
from .spike_bits import memory_order

__all__ = ["recompute_h_after_batchnorm", "normalized_in_neuron", "RecomputableBatchNorm1d",
           "RecomputableBatchNorm2d", "RecomputableBatchNorm3d"]


def _normalize_again(x, weight, bias, *, eps: float, running_dtype):
    """The forward's BatchNorm output from its input: the same call with throwaway running statistics
    (the batch's statistics decide the output; running ones only take an update), so the same kernel."""
    running_mean = running_var = None
    if running_dtype is not None:
        channels = x.shape[1]
        running_mean = torch.zeros(channels, dtype=running_dtype, device=x.device)
        running_var = torch.ones(channels, dtype=running_dtype, device=x.device)
    return F.batch_norm(x, running_mean, running_var, weight, bias, True, 0.0, eps)


_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _normalize_kernels(x: torch.Tensor):
    """The Triton normalization for ``x``, or None: on CUDA tensors where Triton imports (and on CPU
    tensors under Triton's interpreter, as the tests run it)."""
    if not x.is_cuda:
        from ..backends.triton_backend import interpreting  # (imports no Triton)

        if x.device.type != "cpu" or not interpreting():
            return None
    return optional_kernels("flashspike.memory.batchnorm_triton")


def _channels_adjacent(x: torch.Tensor) -> bool:
    """Whether the channels of ``x`` (dense) are adjacent in memory: channels last, or ``[N, C]``."""
    return x.stride(1) == 1 and x.shape[1] > 1


def _batch_statistics(x: torch.Tensor, eps: float, kernels, affine: tuple):
    """(mean, 1/sqrt(var + eps), scale, shift) per channel in float32, var biased; ``affine`` is (weight,
    bias, running mean, running var, factor) as :func:`batchnorm_triton.affine_terms` takes them (the
    running statistics None where they take no update). The Triton statistics where the channels are
    adjacent in memory (where PyTorch's CUDA kernel is slow), which give the affine terms in their last
    launch; else PyTorch's one-pass CUDA statistics, or two float32 passes on the CPU, then the terms."""
    if _channels_adjacent(x):
        return kernels.statistics(x, eps, *affine)
    if x.is_cuda:
        mean, invstd = torch.batch_norm_stats(x, eps)
        mean, invstd = mean.float(), invstd.float()
    else:
        dims = [d for d in range(x.dim()) if d != 1]
        mean = torch.mean(x, dims, dtype=torch.float32)
        centered = x - mean.view(-1, *[1] * (x.dim() - 2))  # float32, made by the subtraction (no copy of x)
        invstd = torch.rsqrt(torch.mean(centered * centered, dims) + eps)
    return (mean, invstd, *kernels.affine_terms(mean, invstd, *affine, eps, x.numel() // x.shape[1]))


class _Normalize(torch.autograd.Function):
    """``x * scale[c] + shift[c]`` (``statistics``: the batch's mean and invstd, the scale and shift made
    of them, eps, the kernels), with the batch-norm backward, which differentiates through the
    statistics too."""

    @staticmethod
    def forward(ctx, x, weight, bias, statistics):
        mean, invstd, scale, shift, eps, kernels, unwritten = statistics
        if unwritten:  # for the neuron that fires from x: written only if something else reads it
            y = _unwritten_like(x)
            mark_normalized(y, x, scale, shift, functools.partial(_fill, kernels.normalize, x, scale, shift))
        else:
            y = kernels.normalize(x, scale, shift)
            mark_normalized(y, x, scale, shift)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps, ctx.parameters, ctx.kernels = eps, (weight is not None, bias is not None), kernels
        return y

    @staticmethod
    @once_differentiable  # a gradient of the gradient raises instead of silently missing
    def backward(ctx, grad):
        x, weight, mean, invstd = ctx.saved_tensors
        has_weight, has_bias = ctx.parameters
        needs = ctx.needs_input_grad
        wanted = (needs[0], needs[1] and has_weight, needs[2] and has_bias)
        if _channels_adjacent(x):  # (PyTorch's kernels for this layout are slow)
            if grad.stride() != x.stride():
                grad = torch.empty_like(x, dtype=grad.dtype).copy_(grad)
            grad_x, grad_weight, grad_bias = ctx.kernels.backward(grad, x, weight, mean, invstd, wanted)
        else:
            grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
                grad.contiguous(memory_format=_memory_format(x)), x, weight, None, None, mean, invstd, True, ctx.eps,
                list(wanted))
        # (on CUDA a gradient masked off may still come back defined: pass on only what was asked for)
        return (grad_x if needs[0] else None, grad_weight if needs[1] and has_weight else None,
                grad_bias if needs[2] and has_bias else None, None)


def _unwritten_like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _fill(normalize, x, scale, shift, output):
    with torch.no_grad():
        normalize(x, scale, shift, out=output)


def _memory_format(x: torch.Tensor):
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


class _Recomputable:
    """The forward of the recomputable BatchNorm classes (mixed in before the torch class)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        running = self.running_mean
        batch_statistics = self.training or running is None
        if (not batch_statistics or not torch.is_grad_enabled() or torch.compiler.is_compiling()
                or not (input.requires_grad or (self.weight is not None and self.weight.requires_grad))):
            return super().forward(input)
        self._check_input_dim(input)
        kernels = None
        if (input.dtype in _KERNEL_DTYPES and input.dim() >= 2 and input.numel()
                and memory_order(input) is not None):  # memory with no gaps, in any order of dimensions
            kernels = _normalize_kernels(input)
        if kernels is None:  # the plain layer's output, marked to be computed again by its own function
            with remaking((input,)):  # a convolution's output made again in the backward, if marked so
                output = super().forward(input)
            again = functools.partial(_normalize_again, eps=self.eps,
                                      running_dtype=None if running is None else running.dtype)
            mark(output, again, (input, self.weight, self.bias))
            return output
        update = self.training and self.track_running_stats
        factor = 0.0
        if update:  # as nn.BatchNorm: an exponential average, or with momentum None the cumulative one
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        weight = None if self.weight is None else self.weight.detach()
        bias = None if self.bias is None else self.bias.detach()
        affine = (weight, bias, self.running_mean if update else None, self.running_var if update else None, factor)
        mean, invstd, scale, shift = _batch_statistics(input.detach(), self.eps, kernels, affine)
        unwritten = self.__dict__.get(_FOR_NEURON, False)
        with remaking((input,)):
            return _Normalize.apply(input, self.weight, self.bias,
                                    (mean, invstd, scale, shift, self.eps, kernels, unwritten))

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

_FOR_NEURON = "_output_for_neuron"  # set on a switched layer inside normalized_in_neuron


_NOTHING_CHANGED = contextlib.nullcontext()


def normalized_in_neuron(batchnorm: nn.Module, neuron: nn.Module):
    """A context for a forward in which the output of ``batchnorm`` goes to ``neuron`` and nothing else
    (``neuron(batchnorm(x))``, through views only): where ``batchnorm`` is switched
    (:func:`recompute_h_after_batchnorm`) and normalizes with Triton, and ``neuron`` is a flashspike
    multi-step neuron that reads its input only through its own kernels, the output is not written,
    and the neuron's kernel fires from the BatchNorm's input, normalizing it as it loads it: one pass
    over memory fewer, the same spikes. Outputs and gradients are those of the calls without it; where
    either module has hooks (which could read the output), and in compiled code, it changes nothing.

    The caller vouches that nothing else reads the output (the model zoo's blocks call it so)."""
    if (type(batchnorm) not in _RECOMPUTABLE.values() or not called_plainly(batchnorm)
            or not takes_fused_call(neuron)):
        return _NOTHING_CHANGED
    return ForOneCall(batchnorm, _FOR_NEURON, True)


def recompute_h_after_batchnorm(net: nn.Module, enabled: bool = True) -> int:
    """Switch every ``nn.BatchNorm1d/2d/3d`` of ``net`` (exactly those classes, not subclasses) to its
    recomputable version, or back with ``enabled=False``; returns how many layers were switched.

    The switch changes the class only: parameters, buffers, hooks, ``state_dict`` keys and printed
    names stay, and every output and gradient is what the plain layers give.
    """
    return switch_module_classes(net, _RECOMPUTABLE, enabled)
