"""The kernel-set contract: what the eager autograd Function (:mod:`.autograd`) and the compiled operators
(:mod:`.operators`) call, and what a backend's launchers implement.

A kernel set is a :class:`KernelSet`. Its two calls lay out the operands and outputs with
:mod:`.layouts` and hand them, ready, to the backend's two launchers, which only launch:

``forward(x, v_init, p, save_h, store_v_seq, decay=None, spike_bits=False, normalize=None, addend=None) -> (spike, v_out, h)``
    ``x`` is a sequence ``[T, *]`` in sequence layout (:func:`.layouts.sequence_layout`). ``decay`` is
    PLIF's k = sigmoid(w), a one-element float32 tensor on x's device that the kernel reads at run
    time (so a captured CUDA graph replays with the current value); None otherwise. ``v_init`` is a
    step-shaped tensor of x's dtype laid out like one block of ``x`` (x's strides without the first),
    or None for "every neuron at ``p.v_rest``". ``spike`` has x's shape and strides; ``v_out`` is V
    for all steps (like ``x``) when ``store_v_seq``, else the last V (like ``v_init``); ``h`` (H, the
    pre-reset potential, what backward needs) is like ``x`` when ``save_h``, else None. All outputs
    have x's dtype. With ``spike_bits`` (the spikes are 0 or 1), the launch also writes the spikes
    packed one bit each in the order of their memory, where the backend can in the same pass, and
    keeps them with ``spike`` (:func:`.packed_bits.keep_bits`) for a layer that stores its input in bits.
    With ``addend`` (a tensor of x's shape, strides and dtype), ``spike`` holds ``addend + S``, rounded
    once to the dtype as torch's add rounds it, and no bits are written.

``backward(h, grad_spike, grad_v_out, p, store_v_seq, need_grad_v_init, sum_grad_x=False, v_init=None, decay=None) -> (grad_x, grad_v_init, grad_w)``
    ``grad_spike`` and ``grad_v_out`` are shaped like ``spike`` and ``v_out``, or None where no
    gradient flows (treated as zero: nothing is materialized). They may have any strides
    (:func:`.layouts.grad_operand` keeps the expanded scalar of ``y.sum().backward()`` as one element
    and brings anything else into h's layout). ``grad_x`` is like ``h``, or, with ``sum_grad_x`` (the
    input was one step repeated over T), its sum over T, like one block of ``h``; ``grad_v_init`` is
    like one block of ``h``, or None when not asked for. ``v_init`` and ``decay`` are what the
    forward received: EIF and PLIF rebuild V[t−1] from H[t−1] and, at t = 0, from ``v_init`` (see
    :mod:`.step_code`). ``grad_w`` is PLIF's ∂L/∂w, a float32 0-d tensor reduced on the device
    (float64 for float64 sequences), else None.

``recompute_h(x, scale, shift, channel_stride, channels, v_init, p, decay=None) -> h``
and ``backward_normalized(x, scale, shift, channel_stride, channels, v_init, grad_spike, grad_v_out, p,
store_v_seq, need_grad_v_init, decay=None)`` (``backward``'s result through that H)
    H of the forward, computed again from the kept input of a BatchNorm-like layer
    (:class:`.recompute.Normalized`): the forward's input was ``round(x * scale[c] + shift[c])``,
    rounded once to x's dtype, c = (i // channel_stride) % channels for element i of a step. The
    forward kernel normalizes ``x`` as it loads it (the same float32 fused multiply-add and rounding
    give the same input, so the same H) and writes H only. ``x`` is laid out like the forward's input.
    ``forward(..., normalize=(scale, shift, channel_stride, channels))`` fires from such an ``x`` the
    same way (spikes, V and their bits; no H): the layer's output need never be made.

A backend subclasses :class:`KernelSet` and implements :meth:`~KernelSet.launch_forward` (which also
runs the recompute) and :meth:`~KernelSet.launch_backward`.
"""

from __future__ import annotations

import torch

from ..params import NeuronParams
from .layouts import backward_outputs, forward_outputs, grad_operand, recomputed_h_output, spike_bits_output
from .packed_bits import keep_bits

__all__ = ["KernelSet", "KERNEL_DTYPES", "BackendError"]

# The kernels load and store these and compute in float32.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class BackendError(RuntimeError):
    """A known backend cannot run on the given input (for example a GPU backend and a CPU tensor): what a
    backend's ``check_input`` raises."""


class KernelSet:
    """Lays out one call's operands and outputs, then launches the backend's kernels on them."""

    fuses_normalized_backward = False  # launch_backward takes ``normalize`` (see backward_normalized)

    def forward(self, x, v_init, p: NeuronParams, save_h: bool, store_v_seq: bool, decay=None, spike_bits=False,
                normalize=None, addend=None):
        spike, v_out, h = forward_outputs(x, save_h and normalize is None, store_v_seq)
        if addend is not None:
            self.launch_forward(x, v_init, spike, v_out, h, decay, p, normalize, None, addend)
            return spike, v_out, h
        bits = spike_bits_output(spike) if spike_bits and self.writes_spike_bits(x.dtype) else None
        if bits is None:  # (a launcher that never normalizes may take the first seven operands only)
            self.launch_forward(x, v_init, spike, v_out, h, decay, p, *(() if normalize is None else (normalize,)))
        elif self.launch_forward(x, v_init, spike, v_out, h, decay, p, normalize, bits):
            keep_bits(spike, 1, bits)
        return spike, v_out, h

    def writes_spike_bits(self, dtype: torch.dtype) -> bool:
        """Whether :meth:`launch_forward` may write the bits of spikes of ``dtype`` (steps of whole bytes,
        :func:`.layouts.spike_bits_output`; the launch still says whether it did). None is written here:
        a layer that keeps its input in bits then packs it itself."""
        return False

    def recompute_h(self, x, scale, shift, channel_stride: int, channels: int, v_init, p: NeuronParams, decay=None):
        h = recomputed_h_output(x)
        self.launch_forward(x, v_init, None, None, h, decay, p, (scale, shift, channel_stride, channels))
        return h

    def backward_normalized(self, x, scale, shift, channel_stride: int, channels: int, v_init, grad_spike,
                            grad_v_out, p: NeuronParams, store_v_seq: bool, need_grad_v_init: bool, decay=None):
        """``backward`` through the H that ``recompute_h`` gives (``x``: a sequence, not one step
        repeated). A backend whose backward kernel can run the forward first (``fuses_normalized_backward``)
        does both in one launch, writing H into the memory of ∂L/∂X and reading it back step by step as
        it overwrites it: H then costs no memory of its own and no pass over memory. Otherwise, the two
        in turn."""
        if not self.fuses_normalized_backward:
            h = self.recompute_h(x, scale, shift, channel_stride, channels, v_init, p, decay)
            return self.backward(h, grad_spike, grad_v_out, p, store_v_seq, need_grad_v_init, False, v_init, decay)
        gs_mode, grad_spike = grad_operand(grad_spike, x, True)  # (H would be laid out as x is)
        gv_mode, grad_v_out = grad_operand(grad_v_out, x, store_v_seq)
        grad_x, grad_v_init = backward_outputs(x, need_grad_v_init)
        grad_w = self.launch_backward(None, gs_mode, grad_spike, gv_mode, grad_v_out, grad_x, grad_v_init, v_init,
                                      decay, p, store_v_seq, (x, scale, shift, channel_stride, channels))
        return grad_x, grad_v_init, grad_w

    def backward(self, h, grad_spike, grad_v_out, p: NeuronParams, store_v_seq: bool, need_grad_v_init: bool,
                 sum_grad_x: bool = False, v_init=None, decay=None):
        gs_mode, grad_spike = grad_operand(grad_spike, h, True)
        gv_mode, grad_v_out = grad_operand(grad_v_out, h, store_v_seq)
        grad_x, grad_v_init = backward_outputs(h, need_grad_v_init, sum_grad_x)
        grad_w = self.launch_backward(h, gs_mode, grad_spike, gv_mode, grad_v_out, grad_x, grad_v_init,
                                      v_init if p.backward_reads_v_prev else None, decay, p, store_v_seq)
        return grad_x, grad_v_init, grad_w

    def launch_forward(self, x, v_init, spike, v_out, h, decay, p: NeuronParams, normalize=None,
                       spike_bits=None, addend=None) -> None:
        """Run the forward on ready operands: write ``spike``, ``v_out`` (every step's V when it is
        shaped like ``x``, else the last V) and ``h`` (when not None). With ``normalize`` (scale, shift,
        channel_stride, channels; see ``recompute_h``), normalize ``x`` as it is read, and write ``h``
        alone (``spike`` and ``v_out`` are None: H computed again) or, with ``h`` None, the rest.
        ``spike_bits`` (only where :meth:`writes_spike_bits` says so): uint8 memory for the spikes
        packed a bit each, element i of ``spike``'s memory in bit i % 8 of byte i // 8. Returns whether
        it wrote them (a launch that cannot, for the alignment of an operand, leaves them). ``addend``
        (laid out like ``spike``): write ``addend + S`` in place of S."""
        raise NotImplementedError

    def launch_backward(self, h, gs_mode, grad_spike, gv_mode, grad_v_out, grad_x, grad_v_init, v_init, decay,
                        p: NeuronParams, store_v_seq: bool, normalize=None):
        """Run the backward on ready operands (``gs_mode``/``gv_mode``: how each output gradient is
        passed, see :mod:`.step_code`): write ``grad_x`` (the sum over T when it is one step),
        ``grad_v_init`` (when not None); return PLIF's ∂L/∂w or None. ``v_init`` is None unless the
        neuron rebuilds V[t−1] (:attr:`NeuronParams.backward_reads_v_prev`). With ``normalize`` (x,
        scale, shift, channel_stride, channels; only where ``fuses_normalized_backward``), ``h`` is
        None: run the forward from the normalized ``x`` first, from ``v_init`` (given whenever the
        forward had one), writing H into ``grad_x``."""
        raise NotImplementedError
