"""Helpers that act on a whole network."""

from __future__ import annotations

import torch
from torch import nn

from . import backends
from .neuron import BaseNode

__all__ = ["reset_net", "set_backend", "seq_to_ann_forward", "multi_step_forward"]


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


def _as_module_chain(modules, who: str) -> tuple:
    """One module, or a list/tuple/Sequential of them, as a tuple applied in order."""
    chain = tuple(modules) if isinstance(modules, (list, tuple, nn.Sequential)) else (modules,)
    for module in chain:
        if not callable(module):
            raise TypeError(f"{who} expects a module or a list/tuple/nn.Sequential of modules, got {module!r}")
    return chain


def _check_seq(x_seq, who: str) -> None:
    if not isinstance(x_seq, torch.Tensor):
        raise TypeError(f"{who} expects x_seq as a tensor of shape [T, N, *], got {type(x_seq).__name__}")
    if x_seq.dim() < 2:
        raise ValueError(
            f"{who} expects x_seq of shape [T, N, *] (at least 2 dimensions), got shape {tuple(x_seq.shape)}"
        )


def seq_to_ann_forward(x_seq: torch.Tensor, stateless_module) -> torch.Tensor:
    """Run stateless modules on every time step at once: ``[T, N, *] -> [T*N, *] -> modules -> [T, N, *]``.

    ``stateless_module`` is one module (a convolution, a batch norm, a pool) or a list, tuple or
    ``nn.Sequential`` of them, applied in order. The modules must keep the batch dimension.
    """
    _check_seq(x_seq, "seq_to_ann_forward")
    chain = _as_module_chain(stateless_module, "seq_to_ann_forward")
    T, N = x_seq.shape[0], x_seq.shape[1]
    y = x_seq.flatten(0, 1)
    for module in chain:
        y = module(y)
    if y.dim() == 0 or y.shape[0] != T * N:
        raise ValueError(
            f"seq_to_ann_forward: the modules must keep the batch dimension T*N = {T * N}, "
            f"but returned shape {tuple(y.shape)}"
        )
    return y.view(T, N, *y.shape[1:])


def multi_step_forward(x_seq: torch.Tensor, single_step_module) -> torch.Tensor:
    """Run single-step modules once per time step and stack the results: ``[T, N, *] -> [T, N, *]``.

    ``single_step_module`` is one module (for example :class:`flashspike.neuron.IFNode`) or a list,
    tuple or ``nn.Sequential`` of them; at each step the whole chain runs before the next step starts,
    so a stateful module sees the steps in order.
    """
    _check_seq(x_seq, "multi_step_forward")
    chain = _as_module_chain(single_step_module, "multi_step_forward")
    if x_seq.shape[0] == 0:
        raise ValueError("multi_step_forward needs at least one time step, got x_seq of shape "
                         f"{tuple(x_seq.shape)}")
    y_seq = []
    for x in x_seq:
        for module in chain:
            x = module(x)
        y_seq.append(x)
    return torch.stack(y_seq)
