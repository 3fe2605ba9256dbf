"""Encoders with a step mode, as SpikingJelly's ``activation_based.encoding``: flashspike's encoders
(:mod:`flashspike.encoding`). A stateless encoder acts on each element in either step mode; a stateful
one gives one step of its spike train per call, or (step mode ``'m'``) one step per step of its input."""

from __future__ import annotations

import torch

from .. import encoding as _core
from . import base

__all__ = ["StatelessEncoder", "StatefulEncoder", "PeriodicEncoder", "LatencyEncoder", "PoissonEncoder",
           "WeightedPhaseEncoder"]


class StatelessEncoder(_core.StatelessEncoder, base.StepModule):
    """Base of encoders without state: subclasses define ``forward(x)``, the same in both step modes."""

    def __init__(self, step_mode: str = "s"):
        super().__init__()
        self.step_mode = step_mode


class PoissonEncoder(StatelessEncoder):
    """Each value x in [0, 1] spikes with probability x, independently at each element and step."""

    forward = _core.PoissonEncoder.forward


class StatefulEncoder(base.MemoryModule, _core.StatefulEncoder):
    """Base of encoders that turn their first input into a spike train of ``T`` steps and hand out one
    step per call (cycling); subclasses define ``single_step_encode(x) -> [T, *x.shape]``."""

    def __init__(self, T: int, step_mode: str = "s"):
        _core.StatefulEncoder.__init__(self, T)
        self.step_mode = step_mode

    def single_step_encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} defines no single_step_encode")

    def encode(self, x: torch.Tensor) -> None:
        self.spike = self.single_step_encode(x)

    def single_step_forward(self, x: torch.Tensor | None = None) -> torch.Tensor:
        return _core.StatefulEncoder.forward(self, x)

    def extra_repr(self) -> str:
        return f"T={self.T}, step_mode={self.step_mode}"


def _encoded_by(core_class: type):
    """``single_step_encode`` through ``core_class.encode`` (which fills ``self.spike``)."""
    def single_step_encode(self, x: torch.Tensor) -> torch.Tensor:
        core_class.encode(self, x)
        return self.spike
    return single_step_encode


class LatencyEncoder(StatefulEncoder, _core.LatencyEncoder):
    """:class:`flashspike.encoding.LatencyEncoder` with a step mode: each x in [0, 1] spikes once, earlier
    when larger (``enc_function`` 'linear' or 'log')."""

    single_step_encode = _encoded_by(_core.LatencyEncoder)

    def __init__(self, T: int, enc_function: str = "linear", step_mode: str = "s"):
        _core.LatencyEncoder.__init__(self, T, enc_function)
        self.step_mode = step_mode


class WeightedPhaseEncoder(StatefulEncoder, _core.WeightedPhaseEncoder):
    """:class:`flashspike.encoding.WeightedPhaseEncoder` with a step mode: the first K binary digits of x."""

    single_step_encode = _encoded_by(_core.WeightedPhaseEncoder)

    def __init__(self, K: int, step_mode: str = "s"):
        _core.WeightedPhaseEncoder.__init__(self, K)
        self.step_mode = step_mode


class PeriodicEncoder(StatefulEncoder, _core.PeriodicEncoder):
    """:class:`flashspike.encoding.PeriodicEncoder` with a step mode: repeats the given spike train."""

    def __init__(self, spike: torch.Tensor, step_mode: str = "s"):
        _core.PeriodicEncoder.__init__(self, spike)
        self.step_mode = step_mode

    encode = _core.PeriodicEncoder.encode
    spike = _core.PeriodicEncoder.spike

    def single_step_forward(self, x: torch.Tensor | None = None) -> torch.Tensor:
        return _core.PeriodicEncoder.forward(self, x)
