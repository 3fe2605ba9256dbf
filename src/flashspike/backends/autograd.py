"""The eager path of a kernel backend: the autograd Function around a kernel set (:mod:`.kernel_set`).

:func:`fused_multi_step` runs a kernel set with the reference backend's ``multi_step`` contract (what
:meth:`.choice.Plan.multi_step` calls): it lays the input out (:mod:`.layouts`), runs the launcher alone
when nothing is differentiated, and otherwise :class:`FusedMultiStep`, whose backward is the kernel
set's backward. A step repeated over
T by ``expand`` reaches the Function as that one step, so its gradient is summed over T in the kernel.
Compiled code takes :mod:`.operators` instead, whose operators call the same kernel sets.
:func:`is_spike_output` tells code outside which autograd nodes hold a neuron's spikes.
"""

from __future__ import annotations

import torch

from ..params import NeuronParams
from .layouts import call_operands, decay_operand, grad_operand, multi_step_outputs, sequence_layout
from .recompute import Normalized, fill_unwritten, normalized_input, recipe_for, recompute, remaking


def refuse_create_graph() -> None:
    """A backward kernel's gradient is not itself differentiable: refuse to build a graph of it
    (grad mode is on in a backward pass only under ``create_graph=True``) rather than drop the
    second-order terms silently."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "the fused kernel backends ('cupy', 'triton') compute the neuron's gradient in one kernel, which "
            "cannot be differentiated again: backward with create_graph=True (torch.autograd.grad(..., "
            "create_graph=True), double backward) needs backend='torch'"
        )


class FusedMultiStep(torch.autograd.Function):
    """``x`` is the sequence, or (``repeat`` = T) one step that every time step receives; ``w`` is
    PLIF's learnable parameter (None for other neurons); ``call`` is (kernel set, NeuronParams,
    store_v_seq, repeat or None, source, spike_bits): one argument, because autograd's per-argument
    work is host time. Applied only when an input requires grad, so H is always needed: kept, or, when ``source``
    is the input's recipe (:func:`.recompute.recipe_for`), computed again in the backward. ``addend``
    (or None): a tensor laid out like the spikes, which the first output then holds added to them (its
    gradient is that output's)."""

    @staticmethod
    def forward(ctx, x, v_init, w, call, addend):
        kernels, p, store_v_seq, repeat, source, spike_bits = call
        ctx.added = addend is not None
        decay = decay_operand(w, p, x)
        x_seq = x if repeat is None else x.expand(repeat, *x.shape)
        normalized = fire_from = None
        if source is not None and isinstance(source[0], Normalized):
            normalized = normalized_input(*source, x_seq)
            if normalized is None:  # the kernels could not find the channels: keep H
                source = None
            elif source[0].fill is not None:  # an input not written yet: fire from the kept input
                fire_from = (*source[0].inputs[1:], *source[0].how)
        if fire_from is None:  # (an input not written yet that is read here is written first)
            fill_unwritten(x)
        if source is None:
            spike, v_out, h = kernels.forward(x_seq, v_init, p, True, store_v_seq, decay, spike_bits, None, addend)
            ctx.save_for_backward(h, v_init if p.backward_reads_v_prev else None, decay)
        else:  # H is computed again in the backward, from what the input's recipe reads
            recipe, view = source
            spike, v_out, _ = kernels.forward(x_seq if fire_from is None else normalized, v_init, p, False,
                                              store_v_seq, decay, spike_bits, fire_from, addend)
            if normalized is not None:  # the kernels read the kept input, normalizing it as they load it
                ctx.save_for_backward(None, v_init, decay, normalized, *recipe.inputs[1:])
                call = (kernels, p, store_v_seq, repeat, (True, recipe.how))
            else:
                ctx.save_for_backward(None, v_init, decay, *recipe.inputs)
                call = (kernels, p, store_v_seq, repeat, (False, (recipe.how, view)))  # the inputs only as saved tensors
        ctx.call, ctx.w = call, w
        ctx.set_materialize_grads(False)
        return spike, v_out

    @staticmethod
    def backward(ctx, grad_spike, grad_v_out):
        refuse_create_graph()
        if grad_spike is None and grad_v_out is None:
            return None, None, None, None, None
        h, v_init, decay, *recipe_inputs = ctx.saved_tensors
        kernels, p, store_v_seq, repeat, source = ctx.call[:5]
        needs = ctx.needs_input_grad
        if h is None and source[0] and repeat is None:
            # Normalized: the kept input, scale and shift, and how (channel_stride, channels); the
            # kernel set computes H and goes back through it in one pass where it can
            grad_spike = _addend_gradient(ctx, grad_spike, recipe_inputs[0])
            grad_x, grad_v_init, grad_w = kernels.backward_normalized(
                *recipe_inputs, *source[1], v_init, grad_spike, grad_v_out, p, store_v_seq, needs[1], decay)
        else:
            if h is None:
                normalizes, how = source
                if not normalizes:  # a Recipe: its function, again
                    x = recompute(*how, recipe_inputs)
                    x_seq = sequence_layout(x) if repeat is None else x.expand(repeat, *x.shape)
                    h = kernels.forward(x_seq, v_init, p, True, False, decay)[2]
                    del x, x_seq
                else:  # one step repeated over T: its gradient is summed, so H needs memory of its own
                    h = kernels.recompute_h(*recipe_inputs, *how, v_init, p, decay)
                if not p.backward_reads_v_prev:
                    v_init = None
            grad_spike = _addend_gradient(ctx, grad_spike, h)
            grad_x, grad_v_init, grad_w = kernels.backward(h, grad_spike, grad_v_out, p, store_v_seq, needs[1],
                                                           repeat is not None, v_init, decay)
        if grad_w is not None:
            w = ctx.w
            grad_w = grad_w.to(w.dtype).reshape(w.shape) if needs[2] else None
        return grad_x, grad_v_init, grad_w, None, grad_spike if ctx.added else None


def _addend_gradient(ctx, grad_spike, like: torch.Tensor):
    """The output's gradient as the kernels read it (laid out like ``like``, the tensor H is laid out as),
    where the call added its spikes to an addend: that gradient is the addend's too, and a gradient in
    another layout (a broadcast from a mean over the pixels, say) would otherwise be copied here and
    again by every later kernel it reaches, and add to the branch's gradient in PyTorch's strided kernel."""
    if not ctx.added or grad_spike is None:
        return grad_spike
    return grad_operand(grad_spike, like, True)[1]


_NODE = FusedMultiStep._backward_cls  # the autograd node of a FusedMultiStep call (its ctx)


def is_spike_output(node, output: int) -> bool:
    """Whether output ``output`` of autograd node ``node`` is the spikes of a neuron run by a kernel
    backend, with its surrogate in the spiking mode: a tensor of 0s and 1s only.

    This is what the neurons tell the memory family (:mod:`flashspike.memory.spike_bits` keeps such a
    tensor in one bit per element); what FusedMultiStep keeps on its node stays private to this module."""
    return (output == 0 and isinstance(node, _NODE) and not node.added
            and node.call[1].surrogate.in_spiking_mode)


def added_to_spikes(node, output: int):
    """Where output ``output`` of autograd node ``node`` is a kernel-backend neuron's spikes (in the spiking
    mode) added to a tensor in the same kernel (``fused_multi_step(addend=...)``): that tensor's edge,
    (its autograd node, its output number), for code that follows what values a tensor can hold; else
    None."""
    if output == 0 and isinstance(node, _NODE) and node.added and node.call[1].surrogate.in_spiking_mode:
        return node.next_functions[-1]  # (the addend is the Function's last tensor argument)
    return None


def _plain_apply():
    """``FusedMultiStep.apply`` without the Python wrapper that ``torch.autograd.Function.apply`` puts
    around the C entry (binding default arguments, unwrapping functorch's tensors): microseconds of
    host time per call that a Function without ``setup_context``, outside functorch's transforms, does
    not need. Where torch lays its classes out otherwise, the public ``apply``."""
    base_apply = getattr(getattr(torch._C, "_FunctionBase", None), "__dict__", {}).get("apply")
    transforms_active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if base_apply is None or transforms_active is None:
        return FusedMultiStep.apply
    raw = base_apply.__get__(None, FusedMultiStep)
    public = FusedMultiStep.apply

    def apply(*args):
        return public(*args) if transforms_active() else raw(*args)

    return apply


_apply = _plain_apply()


def fused_multi_step(kernels, x_seq: torch.Tensor, v_init, p: NeuronParams, store_v_seq: bool, w=None,
                     spike_bits: bool = False, addend=None):
    """The reference backend's ``multi_step`` contract, run by a kernel set.

    The outputs keep the input's layout and shape: no view is made on the way in or out (each costs
    microseconds of host time, and a node in the backward graph). With ``spike_bits``, a differentiated
    call whose surrogate spikes (0 or 1) also writes the spikes packed a bit each where the kernel set
    can, kept with them for a layer that stores its input in bits (:mod:`.packed_bits`). With
    ``addend`` (a tensor shaped like ``x_seq``), the first output is ``addend + spikes``: written by the
    kernel in place of the spikes where ``addend`` is laid out as they are, else added after.
    """
    x, v, w, differentiated, step = call_operands(x_seq, v_init, p, w)
    if addend is not None and (step is not None or addend.dtype != x.dtype or addend.shape != x.shape
                               or addend.stride() != x.stride()):
        spike, v_last, v_seq = fused_multi_step(kernels, x_seq, v_init, p, store_v_seq, w, False)
        return addend + spike, v_last, v_seq
    # Only FusedMultiStep, reading x_seq in place, fires from an input not written yet (see
    # recompute.mark_normalized): anything else has it written first.
    if x is not x_seq and fill_unwritten(x_seq):  # (copied before it was written: copied again)
        x = sequence_layout(x_seq)
    if not differentiated and (addend is None or not addend.requires_grad):
        # the launcher alone, without the autograd Function's host work
        fill_unwritten(x)
        spike, v_out, _ = kernels.forward(x, v, p, False, store_v_seq, decay_operand(w, p, x), False, None, addend)
    else:
        spike_bits = spike_bits and p.surrogate.in_spiking_mode
        if step is None:
            operand, repeat, source = x, None, recipe_for(x_seq)
        else:  # its gradient is summed over T in the kernel, never written T times and reduced
            operand, repeat, source = step, x.shape[0], recipe_for(step)
        call = (kernels, p, store_v_seq, repeat, source, spike_bits and addend is None)
        if source is None:
            spike, v_out = _apply(operand, v, w, call, addend)
        else:  # what the input's recipe reads may itself be an output made again (a convolution's)
            with remaking(source[0].inputs):
                spike, v_out = _apply(operand, v, w, call, addend)
    return multi_step_outputs(spike, v_out, store_v_seq)


class KernelBackend:
    """What the fused-kernel backends share. A subclass sets ``name``, implements ``check_input`` and
    ``kernel_set(p)`` (the :class:`.kernel_set.KernelSet` that runs options ``p``), which
    :mod:`.choice` puts in the plans it makes."""

    name: str

    def __init__(self):
        self._warned_dtypes: set = set()  # dtypes it has no kernels for, once noticed (see .choice)

    def kernel_set(self, p: NeuronParams):
        raise NotImplementedError
