"""Helpers that act on a whole network."""

from __future__ import annotations

from torch import nn

from . import backends
from .neuron import BaseNode

__all__ = ["reset_net", "set_backend"]


def reset_net(net: nn.Module) -> None:
    """Reset every stateful module in ``net``: each module that has a ``reset()`` method, as the
    flashspike neurons (and SpikingJelly-style custom stateful modules) do.

    Call it after each batch: a neuron otherwise continues from the potential the last batch left.
    """
    for module in net.modules():
        reset = getattr(module, "reset", None)
        if callable(reset):
            reset()


def set_backend(net: nn.Module, backend: str) -> int:
    """Set ``backend`` on every multi-step neuron of ``net``; returns how many were changed."""
    backends.validate_name(backend)
    count = 0
    for module in net.modules():
        if isinstance(module, BaseNode) and hasattr(module, "backend"):
            module.backend = backend
            count += 1
    return count
