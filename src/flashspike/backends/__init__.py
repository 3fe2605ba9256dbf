"""The table of multi-step backends, and the choice of one for an input.

Every backend is an object with

- ``name``: its name in the table;
- ``check_input(x_seq)``: raise a clear error when it cannot run on this tensor (wrong device, its
  package missing) and return nothing otherwise;
- ``multi_step(x_seq, v_init, params, store_v_seq) -> (spike_seq, v_last, v_seq or None)``, where
  ``v_init`` is a tensor shaped like ``x_seq[0]`` or a Python float meaning "every neuron at this
  value".

Backends are imported on first use, so a missing optional package costs nothing until it is asked for.
'auto' is resolved per (device type, dtype) once, then answered from a dictionary.
"""

from __future__ import annotations

import importlib

import torch

from .fused import KERNEL_DTYPES

__all__ = ["KNOWN_BACKENDS", "BackendError", "validate_name", "get", "resolve", "auto_candidates"]

# name -> module that defines BACKEND. Adding a backend is one line here.
_MODULES = {
    "torch": "flashspike.backends.reference",
    "cupy": "flashspike.backends.cupy_backend",
    "triton": "flashspike.backends.triton_backend",
}
KNOWN_BACKENDS = ("auto", *_MODULES)

# 'auto' on CUDA tries these in order and takes the first that works there; the order is what
# `python -m flashspike.benchmarks.neuron` measured (docs/benchmarks.md).
_AUTO_ORDER_CUDA = ("cupy", "triton")


class BackendError(RuntimeError):
    """A known backend cannot run on the given input (for example a GPU backend and a CPU tensor)."""


def validate_name(name) -> str:
    if name not in KNOWN_BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(map(repr, KNOWN_BACKENDS))}")
    return name


_loaded: dict = {}


def get(name: str):
    """The backend object called ``name`` (not 'auto'); its module is imported on first use."""
    backend = _loaded.get(name)
    if backend is None:
        validate_name(name)
        if name == "auto":
            raise ValueError("'auto' names a choice, not a backend; use resolve('auto', x_seq)")
        backend = _loaded[name] = importlib.import_module(_MODULES[name]).BACKEND
    return backend


def _usable(name: str, x_seq: torch.Tensor) -> bool:
    try:
        get(name).check_input(x_seq)
    except (ImportError, BackendError):
        return False
    return True


def auto_candidates(device_type: str, dtype: torch.dtype) -> tuple[str, ...]:
    """Backends 'auto' tries, in order, for a device type and dtype."""
    if device_type == "cuda" and dtype in KERNEL_DTYPES:
        return (*_AUTO_ORDER_CUDA, "torch")
    return ("torch",)


_auto_cache: dict = {}


def resolve(name: str, x_seq: torch.Tensor):
    """The backend that runs ``x_seq`` for the requested name, after checking it can."""
    if name == "auto":
        key = (x_seq.device.type, x_seq.dtype)
        backend = _auto_cache.get(key)
        if backend is None:
            chosen = next(n for n in auto_candidates(*key) if _usable(n, x_seq))
            backend = _auto_cache[key] = get(chosen)
        return backend
    backend = get(name)
    backend.check_input(x_seq)
    return backend
