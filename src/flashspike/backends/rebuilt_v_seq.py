"""A multi-step node's ``v_seq`` without ``store_v_seq=True``: computed on first read from what the
call keeps for its backward pass anyway, so that a node whose ``v_seq`` is never read pays nothing.

V[t] follows from H[t], the potential before the reset, and the spike S[t] by the reset rule. A
kernel backend's autograd Function keeps H for its backward; the reference ('torch') keeps each step's
H where its graph needs it (a hard reset without detach_reset). After a call the node keeps only weak
references (:func:`after_call`): nothing stays alive for
``v_seq``'s sake, and nothing is computed unless it is read (:func:`read`). A weak reference to the
call's last V (the node's state ``v``, an output of the call) reaches the kernel Function's node as its
``grad_fn``, and ties the rebuilt ``v_seq`` to the call's graph (see :class:`_NoGradientPath`).

Rebuilt values equal ``store_v_seq=True``'s bit for bit (up to the sign of a zero in 16 bits), or
reading says why there is nothing to rebuild from and how to get ``v_seq``. Where H is 16-bit (the
kernels keep it in the input's dtype, having computed in float32) S is taken from the spike output
(the threshold on the rounded H may differ from the kernel's on the float32 one), and a soft reset's
V = H − V_th cannot be recovered from the rounded H: reading then says so.
"""

from __future__ import annotations

import weakref

import torch

from ..codegen import TORCH
from ..dynamics import reset
from ..params import NeuronParams
from .reference import fire_and_reset
from .step_code import previous_v

__all__ = ["NOT_CALLED", "NO_GRAPH", "COMPILED", "OWN_DYNAMICS", "DROPPED_STATE", "ADDED", "after_call", "read"]

_SIXTEEN_BIT = (torch.float16, torch.bfloat16)

# Why there is nothing to rebuild v_seq from (the node keeps one of these instead of a record).
NOT_CALLED = "there has been no call since the node was built or reset()"
NO_GRAPH = ("its last call ran without autograd (under torch.no_grad() or inference mode, or with no input, "
            "state or parameter requiring grad), so it kept nothing to compute v_seq from")
COMPILED = "its last call ran under torch.compile, whose graph keeps what the compiler decides"
OWN_DYNAMICS = ("its class runs its own neuronal_charge/fire/reset step by step, which keeps no pre-reset "
                "potential")
DROPPED_STATE = ("its last call dropped the last potential v, from which v_seq is computed (it ran inside a "
                 "flashspike.CapturedStep; build the step with drop_last_potentials=False to keep it)")
ADDED = ("its last call returned its spikes added to a residual shortcut (a SEW-ResNet block's ADD joined in the "
         "neuron's call), so no spike output is left to compute v_seq from")
_GONE = ("the graph of its last call is gone (its outputs were dropped, or its state v was replaced or detached), "
         "and with it the pre-reset potential H")
_FREED = ("the backward pass of its last call has freed the pre-reset potential H it kept (read v_seq before "
          "backward(), or pass retain_graph=True)")
_RECOMPUTED = ("its last call's input is computed again in the backward pass (the recompute switch of "
               "flashspike.memory.batchnorm_recompute), so the call kept no pre-reset potential H")
_REFERENCE = ("backend 'torch' (the reference, which 'auto' takes on the CPU) keeps the pre-reset potential H only "
              "where its autograd graph needs it: with a hard reset (v_reset not None) and detach_reset=False")
_SOFT_16_BIT = ("the kernels keep the pre-reset potential H in {dtype}, from which a soft reset's V (computed in "
                "float32) cannot be recovered exactly")
_SPIKE_GONE = ("for a {dtype} input V is rebuilt from H and the call's spike output, which is gone or was changed "
               "in place since")
_SMOOTH = ("its surrogate ran in the smooth mode (spiking=False), whose output the kernels compute in their own "
           "arithmetic, so V rebuilt here would not equal theirs bit for bit")
_SURROGATE_CHANGED = "its surrogate's mode or hyper-parameters changed since the call"


def _missing(node_name: str, why: str) -> AttributeError:
    return AttributeError(
        f"{node_name}.v_seq is not available: {why}. Build the node with store_v_seq=True (or set "
        "node.store_v_seq = True before the call) to keep the potential of every step; see "
        "docs/compatibility.md"
    )


# What a call leaves to rebuild its v_seq from (without autograd: NO_GRAPH), weak references only: (the
# call's last V, NeuronParams, the surrogate's state at the call, the reference's H[t] or None, the spike
# output and its version for a 16-bit kernel call or None). A plain tuple: it is made on every call.
_ref = weakref.ref


def after_call(plan, spike: torch.Tensor, v_last: torch.Tensor, hs: list | None):
    """What to keep after a call (``store_v_seq=False``) that ``plan`` (a :class:`.choice.Plan`) ran and
    that gave ``spike`` and ``v_last`` (the node's new state). Where the reference ran, ``hs`` holds its
    H[t] (None: the call ran without autograd); where kernels ran, whether the call kept H is asked on
    reading."""
    p, sg_state = plan.params, plan.surrogate_state
    if plan.kernels is None:
        if hs is None:
            return NO_GRAPH
        return _ref(v_last), p, sg_state, tuple(_ref(h) for h in hs), None, None
    if spike.dtype is torch.float16 or spike.dtype is torch.bfloat16:
        return _ref(v_last), p, sg_state, None, _ref(spike), spike._version
    return _ref(v_last), p, sg_state, None, None, None


class _NoGradientPath(torch.autograd.Function):
    """Gives a rebuilt v_seq a place in the call's graph (behind the call's last V) whose backward
    refuses: a loss on it would otherwise give the input no gradient through it, silently."""

    @staticmethod
    def forward(ctx, v_seq, anchor):
        return v_seq.view_as(v_seq)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(
            "a multi-step node's v_seq read without store_v_seq=True is computed after the call and has no "
            "gradient path to the input: build the node with store_v_seq=True to differentiate through v_seq "
            "(or use v_seq.detach())"
        )


def read(kept, node_name: str) -> torch.Tensor:
    """``v_seq`` from what :func:`after_call` kept (or a reason string), as ``store_v_seq=True`` gives it;
    an AttributeError that says why where it cannot be."""
    if isinstance(kept, str):
        raise _missing(node_name, kept)
    if isinstance(kept, torch.Tensor):  # an empty call's, or one read before
        return kept
    v_ref, p, sg_state, hs, spike, spike_version = kept
    v_last = v_ref()
    if v_last is None:
        raise _missing(node_name, _GONE)
    if v_last.grad_fn is None:
        raise _missing(node_name, NO_GRAPH)  # an output of the call, made outside autograd
    if p.surrogate_state != sg_state:
        raise _missing(node_name, _SURROGATE_CHANGED)
    with torch.no_grad():
        if hs is not None:
            v_seq = _reference_v_seq(hs, p, v_last.dtype, node_name)
        else:
            v_seq = _kernel_v_seq(v_last, p, spike, spike_version, node_name)
    return _NoGradientPath.apply(v_seq, v_last)


def _reference_v_seq(hs: tuple, p: NeuronParams, dtype: torch.dtype, node_name: str) -> torch.Tensor:
    hs = [h() for h in hs]
    if any(h is None for h in hs):
        # Its graph keeps H only where the reset needs it; there, the backward frees it.
        raise _missing(node_name, _REFERENCE if p.v_reset is None or p.detach_reset else _FREED)
    # Step by step, as the call computed them (the same operations on the same shapes).
    return torch.stack([fire_and_reset(h, p)[1] for h in hs]).to(dtype)


def _kernel_v_seq(v_last: torch.Tensor, p: NeuronParams, spike, spike_version, node_name: str) -> torch.Tensor:
    try:
        h = v_last.grad_fn.saved_tensors[0]
    except RuntimeError:
        raise _missing(node_name, _FREED) from None
    if h is None:
        raise _missing(node_name, _RECOMPUTED)
    if not p.surrogate.in_spiking_mode:
        raise _missing(node_name, _SMOOTH)
    if h.dtype not in _SIXTEEN_BIT:
        return previous_v(h, p, TORCH)
    if p.v_reset is None:
        raise _missing(node_name, _SOFT_16_BIT.format(dtype=h.dtype))
    spike = spike()
    if spike is None or spike._version != spike_version:
        raise _missing(node_name, _SPIKE_GONE.format(dtype=h.dtype))
    # The reset rule on the float32 H with the kernel's own spikes, stored in the input's dtype.
    return reset(h.float(), spike.float(), p).to(h.dtype)
