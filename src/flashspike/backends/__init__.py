"""The multi-step backends, and the choice of one for a call.

A backend is an object with

- ``name``: its name in the table (:mod:`.table`);
- ``check_input(x_seq)``: raise a clear error (:class:`BackendError`, or ImportError for a missing
  package) when it cannot run on this tensor, and return nothing otherwise;
- a kernel backend (:class:`.autograd.KernelBackend`: 'cupy', 'triton') has ``kernel_set(p)``, the
  :class:`.kernel_set.KernelSet` that runs options ``p``; the reference ('torch', :mod:`.reference`) has
  ``multi_step``, the equations differentiated by autograd.

Nodes do not call backends: :func:`.choice.plan_for` turns (backend name or 'auto', the input's device
and dtype, the options) into one :class:`.choice.Plan`, and a node runs its call with
``plan.multi_step(x_seq, v_init, store_v_seq, w=None, hs=None) -> (spike_seq, v_last, v_seq or None)``,
where ``v_init`` is a tensor shaped like ``x_seq[0]`` or a Python float meaning "every neuron at this
value". The compiled operators (:mod:`.operators`) get their plan from the same chooser
(:func:`.choice.plan_for_text`). :func:`resolve` is the backend that runs an input for a name.
"""

from __future__ import annotations

from .choice import resolve
from .kernel_set import BackendError
from .table import KNOWN_BACKENDS, auto_candidates, get, validate_name

__all__ = ["KNOWN_BACKENDS", "BackendError", "validate_name", "get", "resolve", "auto_candidates"]
