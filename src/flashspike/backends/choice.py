"""The one place that turns (backend name or 'auto', device, dtype, neuron options) into what runs: a
:class:`Plan`.

- 'auto' takes, per (device type, dtype), the first backend of :func:`~flashspike.backends.table.auto_candidates`
  whose ``check_input`` passes there;
- a named backend is checked at every choice: its own clear error (wrong device, package missing)
  is raised as it is;
- a kernel backend given a dtype it has no kernels for (float64: they compute in float32) runs
  backend 'torch' instead, after a notice shown once per backend and dtype;
- a surrogate that is no :class:`~flashspike.surrogate.SurrogateFunction` has no formulas to generate
  kernels from: backend 'torch' runs it, a kernel backend refuses it.

Backend 'torch' is the plain-PyTorch reference (:mod:`.reference`), differentiated by autograd, in
eager calls: the plan holds no kernel set for it. Compiled code (``traced=True``) cannot hold a
differentiable loop inside one operator and gets the same equations as a kernel set
(:mod:`.torch_kernels`), which is tested against the reference.

Plans are kept in one dictionary, keyed by the backend name, the input's device type and dtype, the
options' text (:attr:`~flashspike.params.NeuronParams.text`, the surrogate's mode and hyper-parameters
included) and whether the call is traced, so a later choice costs a lookup; the answers of 'auto' are
kept there too. Whoever keeps a plan asks :meth:`Plan.serves` whether it is still the one: the single
staleness rule.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch

from ..params import NeuronParams
from ..surrogate import SurrogateFunction
from . import reference, torch_kernels
from .autograd import fused_multi_step
from .kernel_set import KERNEL_DTYPES, BackendError
from .table import auto_candidates, get

__all__ = ["Plan", "plan_for", "plan_for_text", "resolve", "check_surrogate"]

# ("auto", device type, dtype) -> backend object;
# (name, device type, dtype, options text, traced) -> Plan
_chosen: dict = {}


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """What runs the multi-step calls of one set of options, as the chooser decided it.

    ``backend`` is the name asked for ('auto' included); ``device_type`` and ``dtype`` are the input's
    the plan was made for; ``kernels`` is the kernel set (:mod:`.kernel_set`) that runs the calls, or
    None where the autograd reference (:mod:`.reference`) runs them; ``params`` are the options, and
    ``surrogate_state`` their surrogate's state when the plan was made
    (:attr:`~flashspike.params.NeuronParams.surrogate_state`); ``notice`` is the kernel backend whose
    kernels cannot run this dtype (it tells so once), or None.
    """

    backend: str
    device_type: str
    dtype: torch.dtype
    kernels: object
    params: NeuronParams
    surrogate_state: object
    notice: object = None
    # The input's is_cuda and is_cpu for this device type (None for any other: never served again).
    _cuda: bool | None = dataclasses.field(init=False, repr=False)
    _cpu: bool | None = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        kept = self.device_type in ("cuda", "cpu")
        object.__setattr__(self, "_cuda", self.device_type == "cuda" if kept else None)
        object.__setattr__(self, "_cpu", self.device_type == "cpu" if kept else None)

    def serves(self, backend: str, p: NeuronParams, x_seq: torch.Tensor) -> bool:
        """Whether this plan runs a call of ``backend`` on ``x_seq`` with options ``p``: the same options
        object with its surrogate unchanged since, the same dtype and device type (CPU or CUDA; a plan
        for another device type is chosen again at each call), the same name asked for. Identity checks
        only: a node asks at every call."""
        return (p is self.params and p.surrogate_state is self.surrogate_state and x_seq.dtype is self.dtype
                and x_seq.is_cuda is self._cuda and x_seq.is_cpu is self._cpu and backend == self.backend)

    def multi_step(self, x_seq: torch.Tensor, v_init, store_v_seq: bool, w=None, hs=None, spike_bits=False,
                   addend=None):
        """The call: ``x_seq`` ``[T, N, *]`` from ``v_init`` (a tensor like one step, or a float for every
        neuron) to ``(spike_seq, v_last, v_seq or None)``. ``w`` is PLIF's learnable tensor (None for other
        neurons); ``hs``, a list, receives H[t] of every step where the reference runs (see
        :mod:`.rebuilt_v_seq`); ``spike_bits``: a kernel set also packs the spikes where it can (see
        :func:`.autograd.fused_multi_step`). With ``addend`` (shaped like ``x_seq``) the first output is
        ``addend + spike_seq``, which a kernel set writes in the same pass where it can."""
        if self.kernels is None:
            spike_seq, v_last, v_seq = reference.BACKEND.multi_step(x_seq, v_init, self.params, store_v_seq, w, hs)
            return (spike_seq if addend is None else addend + spike_seq), v_last, v_seq
        return fused_multi_step(self.kernels, x_seq, v_init, self.params, store_v_seq, w, spike_bits, addend)


def _usable(name: str, x_seq: torch.Tensor) -> bool:
    try:
        get(name).check_input(x_seq)
    except (ImportError, BackendError):
        return False
    return True


def resolve(name: str, x_seq: torch.Tensor):
    """The backend that runs ``x_seq`` for the requested name, after checking it can (a named one at
    every call, as what it needs may change: a package, Triton's interpreter switched off)."""
    if name != "auto":
        backend = get(name)
        backend.check_input(x_seq)
        return backend
    key = ("auto", x_seq.device.type, x_seq.dtype)
    backend = _chosen.get(key)
    if backend is None:
        backend = _chosen[key] = get(next(n for n in auto_candidates(*key[1:]) if _usable(n, x_seq)))
    return backend


def check_surrogate(backend_name: str, p: NeuronParams) -> None:
    """Kernels are generated from a :class:`~flashspike.surrogate.SurrogateFunction`'s formulas; any
    other callable surrogate has none to generate them from."""
    if not isinstance(p.surrogate, SurrogateFunction):
        raise TypeError(
            f"backend {backend_name!r} generates its kernels from the formulas of a flashspike.surrogate."
            f"SurrogateFunction, and this neuron's surrogate_function {p.surrogate!r} is another callable; use "
            "backend='torch' for it, or state it as a SurrogateFunction subclass (see flashspike.surrogate)"
        )


def plan_for(name: str, x_seq: torch.Tensor, p: NeuronParams, traced: bool = False) -> Plan:
    """The plan that runs ``x_seq`` with options ``p`` for backend ``name`` (see the module docstring);
    ``traced`` for compiled code."""
    if p.surrogate_state is None:  # a callable that is no SurrogateFunction: the reference, or a refusal
        backend = resolve(name, x_seq)
        if backend.name != "torch":
            check_surrogate(name, p)
        return Plan(name, x_seq.device.type, x_seq.dtype, None, p, None)
    return _plan(name, x_seq, p.text, p, traced)


def plan_for_text(name: str, x: torch.Tensor, options: str) -> Plan:
    """The plan of the compiled operators (:mod:`.operators`), whose options come as their text; its
    ``params`` are read back from that text once, when the plan is made."""
    return _plan(name, x, options, None, True)


def _plan(name: str, x_seq: torch.Tensor, options: str, p: NeuronParams | None, traced: bool) -> Plan:
    if name != "auto":
        get(name).check_input(x_seq)
    key = (name, x_seq.device.type, x_seq.dtype, options, traced)
    plan = _chosen.get(key)
    if plan is None:
        plan = _chosen[key] = _choose(name, x_seq, NeuronParams.from_text(options) if p is None else p, traced)
    elif p is not None and not plan.serves(name, p, x_seq):
        # the same options in another object (another layer's), or a surrogate set back to earlier values
        plan = dataclasses.replace(plan, params=p, surrogate_state=p.surrogate_state)
    if plan.notice is not None:
        _notify(plan.notice, x_seq.dtype)
    return plan


def _choose(name: str, x_seq: torch.Tensor, p: NeuronParams, traced: bool) -> Plan:
    backend = resolve(name, x_seq)
    device_type, dtype = x_seq.device.type, x_seq.dtype
    if backend.name != "torch" and dtype in KERNEL_DTYPES:
        return Plan(name, device_type, dtype, _backend_kernel_set(backend, p), p, p.surrogate_state)
    notice = backend if backend.name != "torch" else None
    kernels = torch_kernels.KERNELS if traced else None
    return Plan(name, device_type, dtype, kernels, p, p.surrogate_state, notice)


def _backend_kernel_set(backend, p: NeuronParams):
    """The kernel set a kernel backend (a :class:`.autograd.KernelBackend`) runs ``p`` with."""
    kernel_set = getattr(backend, "kernel_set", None)
    if kernel_set is None:
        raise NotImplementedError(f"backend {backend.name!r} is no autograd.KernelBackend and has no kernel set")
    return kernel_set(p)


def _notify(backend, dtype: torch.dtype) -> None:
    # float64: float32 kernels would lose the precision asked for; the reference keeps it.
    if dtype not in backend._warned_dtypes:
        backend._warned_dtypes.add(dtype)
        warnings.warn(
            f"backend {backend.name!r} has no {dtype} kernels (they compute in float32); running "
            "the 'torch' reference for this dtype instead. This notice is shown once.",
            stacklevel=5,  # past the chooser, to the module call that ran the node
        )
