"""Encoders that turn data into spikes.

A stateless encoder maps each input to spikes on its own (:class:`PoissonEncoder`). A stateful encoder
turns one input into a whole spike train ``[T, *]`` at once and hands out one step per call, cycling
through the T steps; ``reset()`` (or :func:`flashspike.functional.reset_net`) forgets the train.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import MemoryModule, check_floating

__all__ = ["StatelessEncoder", "StatefulEncoder", "PeriodicEncoder", "LatencyEncoder", "PoissonEncoder",
           "WeightedPhaseEncoder"]


class StatelessEncoder(nn.Module):
    """Base of encoders without state: subclasses define ``forward(x) -> spikes``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _check_T(T, name: str = "T") -> int:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"{name} must be a positive int, got {T!r}")
    return T


class StatefulEncoder(MemoryModule):
    """Base of encoders that make a spike train of T steps and give one step per call.

    The first call encodes its input (``encode(x)`` fills ``self.spike``, shaped ``[T, *x.shape]``);
    each call returns step t and advances t, back to 0 after T − 1. Later inputs are ignored until
    ``reset()``. Subclasses define ``encode``.
    """

    def __init__(self, T: int):
        super().__init__()
        self.register_memory('spike', None)
        self.register_memory('t', 0)
        self.T = _check_T(T)
        self.reset()

    def forward(self, x: torch.Tensor | None = None) -> torch.Tensor:
        if self.spike is None:
            if x is None:
                raise ValueError(f"{type(self).__name__} has no spike train yet: the first call after reset() "
                                 "needs the input to encode")
            self.encode(x)
        t = self.t
        self.t = (t + 1) % self.T
        return self.spike[t]

    def encode(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"T={self.T}"


class PeriodicEncoder(StatefulEncoder):
    """Repeats a given spike train ``[T, *]``, one step per call (the input, if any, is ignored).

    The train is the encoder's definition, not state: ``reset()`` only returns to its first step
    (SpikingJelly's forgets the train), ``encode(spike)`` replaces it, and it moves with the module
    (``.to(device)``) without entering ``state_dict()``.
    """

    def __init__(self, spike: torch.Tensor):
        if not isinstance(spike, torch.Tensor) or spike.dim() < 1 or spike.shape[0] < 1:
            raise ValueError("PeriodicEncoder takes a spike train of shape [T, *] with T >= 1")
        super().__init__(spike.shape[0])
        self.register_buffer("pattern", spike, persistent=False)

    @property
    def spike(self) -> torch.Tensor:
        return self.pattern

    def encode(self, spike: torch.Tensor) -> None:
        self.pattern = spike
        self.T = spike.shape[0]
        self.t = 0

    def forward(self, x: torch.Tensor | None = None) -> torch.Tensor:
        t = self.t
        self.t = (t + 1) % self.T
        return self.pattern[t]


class LatencyEncoder(StatefulEncoder):
    """Each value x in [0, 1] spikes once, at step t_f: the larger x, the earlier.

    'linear': t_f = round((T − 1)·(1 − x)); 'log': t_f = round(T − 1 − ln(α·x + 1)) with
    α = e^(T − 1) − 1, so that x = 1 spikes at step 0 and x = 0 at step T − 1.
    """

    def __init__(self, T: int, enc_function: str = "linear"):
        super().__init__(T)
        if enc_function == "log":
            self.alpha = math.exp(T - 1.0) - 1.0
        elif enc_function != "linear":
            raise NotImplementedError(f"enc_function must be 'linear' or 'log', got {enc_function!r}")
        self.enc_function = enc_function

    def encode(self, x: torch.Tensor) -> None:
        if self.enc_function == "log":
            t_f = (self.T - 1.0 - torch.log(self.alpha * x + 1.0)).round().long()
        else:
            t_f = ((self.T - 1.0) * (1.0 - x)).round().long()
        if x.numel() and (t_f.min() < 0 or t_f.max() >= self.T):
            raise ValueError("LatencyEncoder expects inputs in [0, 1]")
        self.spike = F.one_hot(t_f, num_classes=self.T).to(x).movedim(-1, 0)


class PoissonEncoder(StatelessEncoder):
    """Each value x in [0, 1] spikes with probability x at each call, independently (rand ≤ x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_floating(x, "PoissonEncoder's input (firing probabilities)")
        return torch.rand_like(x).le(x).to(x)


class WeightedPhaseEncoder(StatefulEncoder):
    """Phase coding with K steps of weights 2^−1, 2^−2, ..., 2^−K: the binary expansion of x.

    x must lie in [0, 1 − 2^−K]; the spikes of x at the K steps are its first K binary digits.
    """

    def __init__(self, K: int):
        super().__init__(_check_T(K, "K"))

    def encode(self, x: torch.Tensor) -> None:
        if not ((x >= 0).all() and (x <= 1 - 2 ** (-self.T)).all()):
            raise ValueError(f"WeightedPhaseEncoder(K={self.T}) expects inputs in [0, 1 - 2^-{self.T}]")
        rest = x.clone()
        spike = torch.empty((self.T, *x.shape), device=x.device)
        weight = 0.5
        for k in range(self.T):
            spike[k] = rest >= weight
            rest -= weight * spike[k]
            weight *= 0.5
        self.spike = spike
