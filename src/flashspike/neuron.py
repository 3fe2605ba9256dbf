"""Spiking neurons: multi-step nodes ``[T, N, *] -> [T, N, *]`` and single-step nodes ``[N, *] -> [N, *]``.

A neuron is charge, fire, reset (:mod:`flashspike.dynamics`). IF and LIF differ only in the charge.
The membrane potential is a plain attribute ``v``: a Python float (the resting value) until the first
call, then a tensor shaped like one time step. It is not a buffer, so ``state_dict()`` does not carry
it and DDP does not broadcast it. ``reset()`` (or :func:`flashspike.functional.reset_net`) returns it
to rest.
"""

from __future__ import annotations

import torch
from torch import nn

from . import backends, surrogate
from .backends import ops
from .backends.reference import neuron_step
from .params import NeuronParams

__all__ = ["BaseNode", "IFNode", "LIFNode", "MultiStepIFNode", "MultiStepLIFNode"]


def _number(name: str, value, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)


def _check_floating(x, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{what} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {x.dtype}; "
            "convert it first, e.g. x.float()"
        )


class BaseNode(nn.Module):
    """State and options shared by every neuron; subclasses define ``leaky`` and ``forward``."""

    leaky = False

    def __init__(
        self,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        surrogate_function: nn.Module | None = None,
        detach_reset: bool = False,
        tau: float = 2.0,
        decay_input: bool = True,
    ):
        super().__init__()
        self.v_threshold = _number("v_threshold", v_threshold)
        self.v_reset = None if v_reset is None else _number("v_reset", v_reset)
        if surrogate_function is None:
            surrogate_function = surrogate.Sigmoid()
        if not callable(surrogate_function):
            raise TypeError(
                "surrogate_function must be callable: a flashspike.surrogate module such as surrogate.ATan() "
                f"(every backend) or any function of a tensor (backend 'torch' only), got {surrogate_function!r}"
            )
        self.surrogate_function = surrogate_function
        self.detach_reset = bool(detach_reset)
        if self.leaky:
            self.tau = _number("tau", tau, positive=True)
            self.decay_input = bool(decay_input)
        self.reset()

    @property
    def v_rest(self) -> float:
        """Where ``reset()`` puts the potential: v_reset, or 0 for soft reset."""
        return 0.0 if self.v_reset is None else self.v_reset

    def reset(self) -> None:
        """Forget the state: the potential returns to rest."""
        self.__dict__["v"] = self.v_rest

    # Options whose change must rebuild the cached NeuronParams (see params()).
    _OPTION_NAMES = frozenset({"v_threshold", "v_reset", "surrogate_function", "detach_reset", "tau", "decay_input"})

    def __setattr__(self, name, value):
        if name in self._OPTION_NAMES:
            self.__dict__["_cached_params"] = None
        super().__setattr__(name, value)

    def params(self) -> NeuronParams:
        """The current options as the frozen object that backends receive.

        Built once and kept until an option is assigned again: the per-call path stays a lookup.
        """
        p = self.__dict__.get("_cached_params")
        if p is None:
            p = self.__dict__["_cached_params"] = NeuronParams(
                leaky=self.leaky,
                v_threshold=self.v_threshold,
                v_reset=self.v_reset,
                detach_reset=self.detach_reset,
                surrogate=self.surrogate_function,
                tau=self.tau if self.leaky else 2.0,
                decay_input=self.decay_input if self.leaky else True,
            )
        return p

    def _initial_v(self, step_shape: torch.Size, like: torch.Tensor):
        """The kept potential, checked against one time step of the input (``step_shape``, ``like``)."""
        v = self.v
        if not isinstance(v, torch.Tensor):
            return v
        if v.shape != step_shape:
            raise ValueError(
                f"{type(self).__name__} keeps a state of shape {tuple(v.shape)} from an earlier call, but this "
                f"input's step has shape {tuple(step_shape)}. Call functional.reset_net(net) (or node.reset()) "
                "before feeding a batch of another size."
            )
        if v.device != like.device:
            raise ValueError(
                f"{type(self).__name__} keeps a state on {v.device} but the input is on {like.device}; "
                "call functional.reset_net(net) after moving the net."
            )
        return v if v.dtype == like.dtype else v.to(like.dtype)

    def extra_repr(self) -> str:
        text = f"v_threshold={self.v_threshold}, v_reset={self.v_reset}, detach_reset={self.detach_reset}"
        if self.leaky:
            text += f", tau={self.tau}"
        return text


class _SingleStep(BaseNode):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One time step ``[N, *] -> [N, *]``; the state carries over to the next call."""
        _check_floating(x, "x")
        spike, self.v = neuron_step(x, self._initial_v(x.shape, x), self.params())
        return spike


class _MultiStep(BaseNode):
    def __init__(self, *args, backend: str = "auto", store_v_seq: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend
        self.store_v_seq = bool(store_v_seq)

    @property
    def backend(self) -> str:
        """'auto', 'torch', 'cupy' or 'triton'; may be changed at any time, checked at the call."""
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend = backends.validate_name(name)

    def reset(self) -> None:
        super().reset()
        self.__dict__["v_seq"] = None

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        """The whole sequence ``[T, N, *] -> [T, N, *]`` in one call, continuing from ``self.v``."""
        _check_floating(x_seq, "x_seq")
        if x_seq.dim() < 2:
            raise ValueError(
                f"{type(self).__name__} expects x_seq of shape [T, N, *] (at least 2 dimensions), "
                f"got shape {tuple(x_seq.shape)}"
            )
        v_init = self._initial_v(x_seq.shape[1:], x_seq)
        if x_seq.numel() == 0:
            return self._empty_call(x_seq)
        if torch.compiler.is_compiling():
            # One custom operator that the compiler sees through; it resolves the backend as it runs.
            spike_seq, self.v, v_seq = ops.multi_step(self._backend, x_seq, v_init, self.params(), self.store_v_seq)
            if self.store_v_seq:
                self.v_seq = v_seq
            return spike_seq
        backend = backends.resolve(self._backend, x_seq)
        state = self.__dict__  # plain attributes: skip nn.Module.__setattr__ on the hot path
        spike_seq, state["v"], v_seq = backend.multi_step(x_seq, v_init, self.params(), self.store_v_seq)
        if self.store_v_seq:
            state["v_seq"] = v_seq
        return spike_seq

    def _empty_call(self, x_seq: torch.Tensor) -> torch.Tensor:
        # Nothing to simulate: T = 0 keeps the state, N = 0 leaves an empty one.
        if x_seq.shape[0] > 0:
            self.v = x_seq.new_empty(x_seq.shape[1:])
        if self.store_v_seq:
            self.v_seq = x_seq.new_empty(x_seq.shape)
        return x_seq.new_empty(x_seq.shape)


_NEURON_DOC = """
    Args:
        v_threshold: the potential at which the neuron fires.
        v_reset: the potential after a spike (hard reset), or None to subtract v_threshold (soft reset).
        surrogate_function: a :mod:`flashspike.surrogate` module; its derivative replaces the step's
            in the backward pass. Defaults to ``surrogate.Sigmoid()``. Backend 'torch' also takes any
            other function of a tensor.
        detach_reset: detach the spike in the reset term only.{extra}
"""
_LIF_DOC = """
        tau: the membrane time constant (> 0).
        decay_input: whether the input is divided by tau as well."""
_MULTI_DOC = """
        backend: 'auto' (the fastest available for the input's device), 'torch', 'cupy' or 'triton'.
        store_v_seq: keep the potential of every step in ``v_seq`` ([T, N, *]) after each call."""


class IFNode(_SingleStep):
    """Single-step integrate-and-fire neuron: H[t] = V[t−1] + X[t]."""

    __doc__ += _NEURON_DOC.format(extra="")

    def __init__(self, v_threshold=1.0, v_reset=0.0, surrogate_function=None, detach_reset=False):
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset)


class LIFNode(_SingleStep):
    """Single-step leaky integrate-and-fire neuron (see :mod:`flashspike.dynamics` for the charge)."""

    __doc__ += _NEURON_DOC.format(extra=_LIF_DOC)
    leaky = True

    def __init__(self, tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, surrogate_function=None,
                 detach_reset=False):
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset, tau, decay_input)


class MultiStepIFNode(_MultiStep):
    """Multi-step integrate-and-fire neuron: the whole ``[T, N, *]`` sequence per call."""

    __doc__ += _NEURON_DOC.format(extra=_MULTI_DOC)

    def __init__(self, v_threshold=1.0, v_reset=0.0, surrogate_function=None, detach_reset=False,
                 backend="auto", store_v_seq=False):
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset,
                         backend=backend, store_v_seq=store_v_seq)


class MultiStepLIFNode(_MultiStep):
    """Multi-step leaky integrate-and-fire neuron: the whole ``[T, N, *]`` sequence per call."""

    __doc__ += _NEURON_DOC.format(extra=_LIF_DOC + _MULTI_DOC)
    leaky = True

    def __init__(self, tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, surrogate_function=None,
                 detach_reset=False, backend="auto", store_v_seq=False):
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset, tau, decay_input,
                         backend=backend, store_v_seq=store_v_seq)
