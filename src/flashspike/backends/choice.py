"""The one place that turns (backend name or 'auto', device, dtype, neuron options) into what runs.

- 'auto' takes, per (device type, dtype), the first backend of :func:`~flashspike.backends.auto_candidates`
  whose ``check_input`` passes there;
- a named backend is checked at every choice: its own clear error (wrong device, package missing)
  is raised as it is;
- a kernel backend given a dtype it has no kernels for (float64: they compute in float32) runs
  backend 'torch' instead, after a notice shown once per backend and dtype;
- a surrogate that is no :class:`~flashspike.surrogate.SurrogateFunction` has no formulas to generate
  kernels from: backend 'torch' runs it, a kernel backend refuses it.

Backend 'torch' is the plain-PyTorch reference (:mod:`.reference`), differentiated by autograd, in
eager calls: :func:`kernel_set_for` answers None for it. Compiled code (``traced=True``) cannot hold
a differentiable loop inside one operator and gets the same equations as a kernel set
(:mod:`.torch_kernels`), which is tested against the reference.

The choice of 'auto' and every kernel set are kept in one dictionary, so a later call costs a lookup.
"""

from __future__ import annotations

import warnings

import torch

from ..params import NeuronParams
from ..surrogate import SurrogateFunction
from . import BackendError, auto_candidates, get
from .kernel_set import KERNEL_DTYPES

__all__ = ["resolve", "kernel_set_for", "check_surrogate", "surrogate_state"]

# ("auto", device type, dtype) -> backend object;
# (name, device type, dtype, params key, traced) -> (kernel set or None, backend that gives the notice or None)
_chosen: dict = {}


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


def surrogate_state(sg):
    """What of a surrogate the generated kernels depend on and may change in place (its mode and
    hyper-parameters, assigned at any time): a cheap stand-in for its ``key`` to tell a kept choice
    stale. None for a callable that is no SurrogateFunction."""
    if isinstance(sg, SurrogateFunction):
        return sg.in_spiking_mode, sg.values()
    return None


def kernel_set_for(name: str, x_seq: torch.Tensor, p: NeuronParams, traced: bool = False, params_key=None):
    """The kernel set (:mod:`.kernel_set`) that runs ``x_seq`` with options ``p`` for backend ``name``,
    or None where the autograd reference runs it (see the module docstring). ``params_key`` is
    ``p.key`` when the caller keeps it already."""
    if not isinstance(p.surrogate, SurrogateFunction):
        backend = resolve(name, x_seq)
        if backend.name != "torch":
            check_surrogate(name, p)
        return None
    if name != "auto":
        get(name).check_input(x_seq)
    key = (name, x_seq.device.type, x_seq.dtype, p.key if params_key is None else params_key, traced)
    found = _chosen.get(key)
    if found is None:
        found = _chosen[key] = _choose(name, x_seq, p, traced)
    kernels, notifier = found
    if notifier is not None:
        _notify(notifier, x_seq.dtype)
    return kernels


def _choose(name: str, x_seq: torch.Tensor, p: NeuronParams, traced: bool):
    backend = resolve(name, x_seq)
    if backend.name != "torch" and x_seq.dtype in KERNEL_DTYPES:
        return _backend_kernel_set(backend, p), None
    notifier = backend if backend.name != "torch" else None
    if not traced:
        return None, notifier
    from . import torch_kernels

    return torch_kernels.KERNELS, notifier


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
            stacklevel=4,
        )
