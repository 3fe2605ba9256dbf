"""Containers that run ordinary (stateless or single-step) modules over a time sequence ``[T, N, *]``."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SeqToANNContainer", "MultiStepContainer"]


def _wrap(modules: tuple) -> nn.Module:
    if not modules:
        raise ValueError("the container needs at least one module")
    return modules[0] if len(modules) == 1 else nn.Sequential(*modules)


def _check_sequence(x_seq: torch.Tensor, who: str) -> None:
    if not isinstance(x_seq, torch.Tensor):
        raise TypeError(f"{who} expects a tensor of shape [T, N, *], got {type(x_seq).__name__}")
    if x_seq.dim() < 2:
        raise ValueError(f"{who} expects x_seq of shape [T, N, *] (at least 2 dimensions), got {tuple(x_seq.shape)}")


class SeqToANNContainer(nn.Module):
    """Runs stateless modules on all time steps at once: ``[T, N, *] -> [T*N, *] -> modules -> [T, N, *]``.

    Merging T into the batch is a view for a contiguous input, so a convolution or linear layer sees
    one large batch instead of T small ones.
    """

    def __init__(self, *modules: nn.Module):
        super().__init__()
        self.module = _wrap(modules)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        _check_sequence(x_seq, "SeqToANNContainer")
        y = self.module(x_seq.flatten(0, 1))
        return y.view(x_seq.shape[0], x_seq.shape[1], *y.shape[1:])


class MultiStepContainer(nn.Module):
    """Runs single-step modules (for example :class:`flashspike.neuron.IFNode`) once per time step."""

    def __init__(self, *modules: nn.Module):
        super().__init__()
        self.module = _wrap(modules)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        _check_sequence(x_seq, "MultiStepContainer")
        return torch.stack([self.module(x) for x in x_seq])
