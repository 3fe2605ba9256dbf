"""The multi-step neuron as two PyTorch custom operators, so that ``torch.compile`` sees through it.

``flashspike::multi_step_forward(x, v_init, w, save_h, store_v_seq, backend, options, repeat=0) -> (spike, v_out, h)``
``flashspike::multi_step_backward(h, grad_spike, grad_v_out, v_init, w, store_v_seq, need_grad_v_init,
backend, options, sum_grad_x=False) -> (grad_x, grad_v_init, grad_w)``

They run the kernel sets of :mod:`.kernel_set` on the tensors of the eager path, read in place in the
same layouts (:mod:`.layouts`: ``x`` of any rank ``[T, *]`` whose steps are dense blocks, channels_last
included), and hand back outputs with the same strides; the fake implementations state exactly those
strides. With ``repeat`` = T > 0, ``x`` is one step that every time step receives (a step expanded over
T), and the backward with ``sum_grad_x`` writes its gradient summed over T, as the eager Function does.

``w`` is PLIF's learnable parameter (None for other neurons): a tensor argument, so a compiled graph
reads its current value at every call; ``grad_w`` is its gradient.

The operator pair is one whatever the backend: the backend's name ('auto' included) and the neuron's
options travel as two strings (:attr:`~flashspike.params.NeuronParams.text`), and
:func:`.choice.plan_for_text` turns them into a plan (a kernel set and the options read back) when the
operator runs, so nothing about the choice has to be traced. A ``None``
output of a launcher (no H saved, no initial-state gradient) leaves the operator as an empty tensor,
because an operator's outputs are always tensors.

Only compiled code comes here (:meth:`flashspike.neuron._MultiStep.forward` checks
``torch.compiler.is_compiling()``): eager calls keep the shorter host path of
:class:`.autograd.FusedMultiStep`, or the reference.
"""

from __future__ import annotations

import torch

from .. import surrogate as surrogate_module
from ..params import NeuronParams
from .autograd import refuse_create_graph
from .choice import plan_for, plan_for_text
from .layouts import (call_operands, decay_operand, multi_step_outputs, sequence_layout, sequence_strides,
                      step_operand)

__all__ = ["multi_step"]

FORWARD = "flashspike::multi_step_forward"
BACKWARD = "flashspike::multi_step_backward"


def _sequence_input(x: torch.Tensor, v_init, repeat: int) -> torch.Tensor:
    """The operator's input rules (also checked while tracing, by the fake implementation); the sequence
    ``[T, *]`` that ``x`` stands for."""
    if repeat < 0 or x.dim() < (1 if repeat else 2):
        raise ValueError(
            f"{FORWARD} expects x of shape [T, N, *] (or, with repeat = T > 0, one step [N, *]), got shape "
            f"{tuple(x.shape)} with repeat={repeat}"
        )
    step_shape = x.shape if repeat else x.shape[1:]
    if v_init is not None and (v_init.shape != step_shape or v_init.dtype != x.dtype):
        raise ValueError(
            f"{FORWARD} expects v_init of one step's shape [N, *] = {tuple(step_shape)} and dtype {x.dtype} (or "
            f"None for the resting potential), got shape {tuple(v_init.shape)} and dtype {v_init.dtype}"
        )
    return x.expand(repeat, *x.shape) if repeat else x


def _absent(like: torch.Tensor) -> torch.Tensor:
    """An operator's stand-in for a launcher's None output."""
    return like.new_empty((0,))


torch.library.define(
    FORWARD,
    "(Tensor x, Tensor? v_init, Tensor? w, bool save_h, bool store_v_seq, str backend, str options, int repeat=0) "
    "-> (Tensor, Tensor, Tensor)",
)
torch.library.define(
    BACKWARD,
    "(Tensor h, Tensor? grad_spike, Tensor? grad_v_out, Tensor? v_init, Tensor? w, bool store_v_seq, "
    "bool need_grad_v_init, str backend, str options, bool sum_grad_x=False) -> (Tensor, Tensor, Tensor)",
)
# The kernels are registered through the plain Library API: torch.library.register_kernel and
# register_autograd wrap them in Python layers (a Dynamo guard, an autograd kernel that dispatches
# again) that cost tens of microseconds per call, and compiled graphs call these operators at every
# step. See _forward_autograd for what stands in for register_autograd.
_LIBRARY = torch.library.Library("flashspike", "FRAGMENT")


def _forward(x, v_init, w, save_h, store_v_seq, backend, options, repeat=0):
    x = sequence_layout(_sequence_input(x, v_init, repeat))
    plan = plan_for_text(backend, x, options)
    p = plan.params
    spike, v_out, h = plan.kernels.forward(x, step_operand(v_init, x), p, save_h, store_v_seq,
                                           decay_operand(w, p, x))
    return spike, v_out, _absent(x) if h is None else h


@torch.library.register_fake(FORWARD)
def _forward_fake(x, v_init, w, save_h, store_v_seq, backend, options, repeat=0):
    x = _sequence_input(x, v_init, repeat)
    strides = sequence_strides(x)  # the layout forward_outputs gives x in sequence layout

    def sequence():
        return x.new_empty_strided(x.shape, strides)

    v_out = sequence() if store_v_seq else x.new_empty_strided(x.shape[1:], strides[1:])
    return sequence(), v_out, sequence() if save_h else _absent(x)


def _backward(h, grad_spike, grad_v_out, v_init, w, store_v_seq, need_grad_v_init, backend, options,
              sum_grad_x=False):
    plan = plan_for_text(backend, h, options)
    p = plan.params
    grad_x, grad_v_init, grad_w = plan.kernels.backward(h, grad_spike, grad_v_out, p, store_v_seq, need_grad_v_init,
                                                        sum_grad_x, step_operand(v_init, h), decay_operand(w, p, h))
    grad_w = _absent(h) if grad_w is None else grad_w.to(w.dtype).reshape(w.shape)
    return grad_x, _absent(h) if grad_v_init is None else grad_v_init, grad_w


@torch.library.register_fake(BACKWARD)
def _backward_fake(h, grad_spike, grad_v_out, v_init, w, store_v_seq, need_grad_v_init, backend, options,
                   sum_grad_x=False):
    strides = h.stride()  # the layout backward_outputs gives
    step = h.new_empty_strided(h.shape[1:], strides[1:])
    grad_x = step if sum_grad_x else h.new_empty_strided(h.shape, strides)
    grad_w = _absent(h) if w is None else w.new_empty(w.shape)
    return grad_x, h.new_empty_strided(h.shape[1:], strides[1:]) if need_grad_v_init else _absent(h), grad_w


# One kernel for every device: the kernel set is chosen inside, from the backend name and x's device.
# The backward operator has no autograd kernel of its own (it is not differentiable: PyTorch's
# fallback passes it on, and refuse_create_graph guards the one place that calls it under grad).
_LIBRARY.impl("multi_step_forward", _forward, "CompositeExplicitAutograd")
_LIBRARY.impl("multi_step_backward", _backward, "CompositeExplicitAutograd")

_FORWARD_OP = torch.ops.flashspike.multi_step_forward.default
_AFTER_AUTOGRAD = torch._C._after_autograd_keyset
# Keys between autograd and a backend kernel that pass an operator without kernels of theirs through.
_PASSING_KEYS = (torch._C.DispatchKey.ADInplaceOrView, torch._C.DispatchKey.AutocastCPU,
                 torch._C.DispatchKey.AutocastCUDA)
_BACKEND_KEYS = frozenset((torch._C.DispatchKey.CPU, torch._C.DispatchKey.CUDA))
_reaches_kernel: dict = {}  # raw dispatch key set -> whether dispatching below autograd ends at _forward


def _forward_below_autograd(keyset, *args):
    """The forward operator as the dispatcher would run it below autograd. Plain CPU or CUDA tensors
    outside any mode go to :func:`_forward` directly (a Python-to-C++-to-Python round trip saved);
    fake, functional and other tensors, and active modes, go through the dispatcher."""
    raw = keyset.raw_repr()
    direct = _reaches_kernel.get(raw)
    if direct is None:
        rest = keyset & _AFTER_AUTOGRAD
        for key in _PASSING_KEYS:
            rest = rest.remove(key)
        direct = _reaches_kernel[raw] = rest.highestPriorityTypeId() in _BACKEND_KEYS
    if direct:
        return _forward(*args)
    return _FORWARD_OP.redispatch(keyset & _AFTER_AUTOGRAD, *args)


class _DifferentiatedForward(torch.autograd.Function):
    """The forward operator when an input requires grad: its backward is the backward operator."""

    @staticmethod
    def forward(ctx, keyset, x, v_init, w, save_h, store_v_seq, backend, options, repeat):
        with torch._C._AutoDispatchBelowAutograd():
            spike, v_out, h = _forward_below_autograd(keyset, x, v_init, w, save_h, store_v_seq, backend, options,
                                                      repeat)
        ctx.mark_non_differentiable(h)
        # Like FusedMultiStep: an output nobody used brings None, not a materialized zero tensor.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(h, v_init, w)
        ctx.save_h, ctx.store_v_seq, ctx.backend, ctx.options = save_h, store_v_seq, backend, options
        ctx.sum_grad_x = repeat > 0
        return spike, v_out, h

    @staticmethod
    def backward(ctx, grad_spike, grad_v_out, _grad_h):
        refuse_create_graph()
        if grad_spike is None and grad_v_out is None:
            return (None,) * 9
        if not ctx.save_h:
            raise RuntimeError(
                f"{FORWARD} ran with save_h=False, so it kept no H to differentiate through; pass save_h=True "
                "when an input requires grad"
            )
        h, v_init, w = ctx.saved_tensors
        need_grad_v_init = ctx.needs_input_grad[2]
        grad_x, grad_v_init, grad_w = torch.ops.flashspike.multi_step_backward(
            h, grad_spike, grad_v_out, v_init, w, ctx.store_v_seq, need_grad_v_init, ctx.backend, ctx.options,
            ctx.sum_grad_x,
        )
        grad_w = grad_w if w is not None and ctx.needs_input_grad[3] else None
        return None, grad_x, grad_v_init if need_grad_v_init else None, grad_w, None, None, None, None, None


_grad_enabled = torch.is_grad_enabled
_any_requires_grad = torch._C._any_requires_grad


def _forward_autograd(keyset, x, v_init, w, save_h, store_v_seq, backend, options, repeat=0):
    """The forward operator's autograd kernel: recorded for backward when an input requires grad,
    else passed straight on (what compiled graphs, which run without grad, call at every step)."""
    if _grad_enabled() and _any_requires_grad(x, v_init, w):
        return _DifferentiatedForward.apply(keyset, x, v_init, w, save_h, store_v_seq, backend, options, repeat)
    return _forward_below_autograd(keyset, x, v_init, w, save_h, store_v_seq, backend, options, repeat)


_LIBRARY.impl("multi_step_forward", _forward_autograd, "Autograd", with_keyset=True)


def multi_step(backend: str, x_seq: torch.Tensor, v_init, p: NeuronParams, store_v_seq: bool, w=None):
    """:meth:`.choice.Plan.multi_step`'s contract through the custom operators (traceable), for backend
    ``backend`` and options ``p``."""
    if not isinstance(p.surrogate, surrogate_module.SurrogateFunction):
        # A plain callable surrogate has no formulas for the operators' kernels; the reference traces
        # (a kernel backend refuses it, with the reason).
        return plan_for(backend, x_seq, p, traced=True).multi_step(x_seq, v_init, store_v_seq, w)
    x, v, w, save_h, step = call_operands(x_seq, v_init, p, w, traced=True)
    forward = torch.ops.flashspike.multi_step_forward
    if step is None:
        spike, v_out, _ = forward(x, v, w, save_h, store_v_seq, backend, p.text)
    else:  # its gradient is summed over T in the kernel, as in eager calls
        spike, v_out, _ = forward(step, v, w, save_h, store_v_seq, backend, p.text, x.shape[0])
    return multi_step_outputs(spike, v_out, store_v_seq)
