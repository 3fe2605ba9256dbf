"""Triton, imported on first use: the one place that imports it for both kernel families.

The neuron backend 'triton' needs Triton and says so (:func:`import_triton` raises a clear
ImportError); the memory family (:mod:`flashspike.memory`) only prefers it, and computes the same
with PyTorch operations where it is missing (:func:`optional_kernels` gives None). Either way
nothing imports Triton until a kernel is asked for, so a missing Triton costs nothing before.
"""

from __future__ import annotations

import importlib

__all__ = ["import_triton", "optional_kernels"]

_triton = None  # the triton module, once imported
_kernel_modules: dict = {}  # module name -> the module, or None where Triton cannot be imported


def import_triton():
    """The triton module (and its ``triton.language``), imported once; an ImportError that names the
    cause and the fix where it cannot be imported."""
    global _triton
    if _triton is None:
        try:
            import triton
            import triton.language  # noqa: F401  (the kernels' `tl`)
        except Exception as err:  # a broken install raises more than ImportError; show its cause
            raise ImportError(
                "backend 'triton' needs the triton package, which could not be imported "
                f"({type(err).__name__}: {err}). Install it with `pip install triton` (PyTorch's CUDA wheels "
                "ship a matching one), or use backend='torch' or 'auto'."
            ) from err
        _triton = triton
    return _triton


def optional_kernels(name: str):
    """The module ``name`` (flashspike's, written with ``triton.jit`` kernels at its top), imported once;
    None where Triton cannot be imported, and the caller computes the same with PyTorch operations.
    An error inside the module itself is raised, not taken for a missing Triton."""
    if name not in _kernel_modules:
        try:
            import_triton()
        except ImportError:
            _kernel_modules[name] = None
        else:
            _kernel_modules[name] = importlib.import_module(name)
    return _kernel_modules[name]
