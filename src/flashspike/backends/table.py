"""The table of multi-step backends: their names, the module that defines each, and the order in which
'auto' tries them.

Backends are imported on first use (:func:`get`), so a missing optional package costs nothing until it
is asked for. Which backend and which kernel set run a call is decided in :mod:`.choice`.
"""

from __future__ import annotations

import importlib

import torch

from .kernel_set import KERNEL_DTYPES

__all__ = ["KNOWN_BACKENDS", "validate_name", "get", "auto_candidates"]

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


def auto_candidates(device_type: str, dtype: torch.dtype) -> tuple[str, ...]:
    """Backends 'auto' tries, in order, for a device type and dtype."""
    if device_type == "cuda" and dtype in KERNEL_DTYPES:
        return (*_AUTO_ORDER_CUDA, "torch")
    return ("torch",)
