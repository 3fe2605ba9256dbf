"""Helpers that act on a whole network, as SpikingJelly's ``activation_based.functional``:
:func:`set_step_mode` and the helpers of :mod:`flashspike.functional` (reset, detach, losses, spike
trains), with ``seq_to_ann_forward`` also taking tuples of sequences (for layers such as MaxUnpool
that take several tensors)."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as _core
from ..dropped_potential import DROPS_LAST_POTENTIAL
from ..functional import (detach_net, first_spike_index, kaiming_normal_conv_linear_weight, kernel_dot_product,
                          redundant_one_hot, reset_net, set_backend, set_threshold_margin, spike_similar_loss,
                          temporal_efficient_training_cross_entropy)
from . import base

__all__ = [
    "set_step_mode", "reset_net", "detach_net", "set_backend", "seq_to_ann_forward", "multi_step_forward",
    "t_last_seq_to_ann_forward", "t_last_multi_step_forward", "chunk_multi_step_forward", "first_spike_index",
    "redundant_one_hot", "kernel_dot_product", "spike_similar_loss", "set_threshold_margin",
    "temporal_efficient_training_cross_entropy", "kaiming_normal_conv_linear_weight",
]


def _keeps_its_step_mode(module: nn.Module) -> bool:
    """Containers that run their modules in single-step mode, whatever the net's step mode."""
    from .layer import (ElementWiseRecurrentContainer, LinearRecurrentContainer, MultiStepContainer,
                        SeqToANNContainer, StepModeContainer)
    return isinstance(module, (StepModeContainer, MultiStepContainer, SeqToANNContainer,
                               ElementWiseRecurrentContainer, LinearRecurrentContainer))


def set_step_mode(net: nn.Module, step_mode: str) -> None:
    """Set ``step_mode`` (``'s'`` or ``'m'``) on every module of ``net`` that has one, except inside the
    containers that run their modules step by step themselves (whose modules stay in ``'s'``)."""
    if step_mode not in base.STEP_MODES:
        raise ValueError(f"step_mode must be one of {base.STEP_MODES}, got {step_mode!r}")
    pending = [net]
    while pending:
        module = pending.pop()
        if hasattr(module, "step_mode"):
            module.step_mode = step_mode
        if not _keeps_its_step_mode(module):
            pending.extend(reversed(list(module.children())))


def _as_callable_chain(stateless_module):
    chain = tuple(stateless_module) if isinstance(stateless_module, (list, tuple, nn.Sequential)) else (
        stateless_module,)

    def run(*xs):
        for module in chain:
            xs = (module(*xs),)
        return xs[0]
    return run


def seq_to_ann_forward(x_seq, stateless_module):
    """Stateless modules on every time step at once: ``[T, N, *] -> [T*N, *] -> modules -> [T, N, *]``.

    ``x_seq`` is a sequence or a tuple of sequences sharing ``[T, N]`` (passed to the first module as
    several arguments); ``stateless_module`` one module or callable, or a list/tuple/``nn.Sequential``
    of them. A tuple of outputs (a pool with ``return_indices``) is unmerged one by one.
    """
    if isinstance(x_seq, torch.Tensor):
        return _core.seq_to_ann_forward(x_seq, stateless_module)
    if isinstance(x_seq, tuple) and len(x_seq) == 1:
        return _core.seq_to_ann_forward(x_seq[0], _as_callable_chain(stateless_module))
    if not (isinstance(x_seq, tuple) and all(isinstance(x, torch.Tensor) and x.dim() >= 2 for x in x_seq)):
        raise TypeError("seq_to_ann_forward expects a tensor [T, N, *] or a tuple of them")
    leading = x_seq[0].shape[:2]
    if any(x.shape[:2] != leading for x in x_seq):
        raise ValueError("seq_to_ann_forward: every tensor of x_seq must share the leading [T, N], got shapes "
                         f"{[tuple(x.shape) for x in x_seq]}")
    y = _as_callable_chain(stateless_module)(*(x.flatten(0, 1) for x in x_seq))
    if isinstance(y, tuple):
        return tuple(item.unflatten(0, leading) for item in y)
    return y.unflatten(0, leading)


def multi_step_forward(x_seq: torch.Tensor, single_step_module) -> torch.Tensor:
    """Single-step modules once per time step, stacked: ``[T, N, *] -> [T, N, *]``."""
    return _core.multi_step_forward(x_seq, single_step_module)


def t_last_seq_to_ann_forward(x_seq: torch.Tensor, stateless_module) -> torch.Tensor:
    """:func:`seq_to_ann_forward` for sequences with time last, ``[N, *, T]``."""
    return seq_to_ann_forward(x_seq.movedim(-1, 0), stateless_module).movedim(0, -1)


def t_last_multi_step_forward(x_seq: torch.Tensor, single_step_module) -> torch.Tensor:
    """:func:`multi_step_forward` for sequences with time last, ``[N, *, T]``."""
    return multi_step_forward(x_seq.movedim(-1, 0), single_step_module).movedim(0, -1)


def chunk_multi_step_forward(split_size: int, x_seq: torch.Tensor, multi_step_module: nn.Module) -> torch.Tensor:
    """A multi-step module on chunks of ``split_size`` steps, one after the other (its state carries
    over): less memory for long sequences, the same result."""
    chunks = torch.split(x_seq, split_size)
    # Inside a step that drops the neurons' last potentials (flashspike.CapturedStep), every chunk but
    # the last continues from them: those calls keep them.
    dropping = [m for m in multi_step_module.modules() if m.__dict__.get(DROPS_LAST_POTENTIAL)]
    outputs = []
    try:
        for index, x in enumerate(chunks):
            for node in dropping:
                node.__dict__[DROPS_LAST_POTENTIAL] = index == len(chunks) - 1
            outputs.append(multi_step_module(x))
    finally:
        for node in dropping:
            node.__dict__[DROPS_LAST_POTENTIAL] = True
    return torch.cat(outputs)
