"""Spiking neurons: multi-step nodes ``[T, N, *] -> [T, N, *]`` and single-step nodes ``[N, *] -> [N, *]``.

A neuron is charge, fire, reset (:mod:`flashspike.dynamics`). IF, LIF, PLIF (LIF with a learnable
decay, the parameter ``w``) and EIF differ only in the charge.
The membrane potential is a plain attribute ``v``: a Python float (the resting value) until the first
call, then a tensor shaped like one time step. It is not a buffer, so ``state_dict()`` does not carry
it and DDP does not broadcast it. ``reset()`` (or :func:`flashspike.functional.reset_net`) returns it
to rest.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import backends, surrogate
from .backends import ops
from .backends.reference import neuron_step
from .params import NeuronParams

__all__ = [
    "BaseNode", "IFNode", "LIFNode", "MultiStepIFNode", "MultiStepLIFNode", "ParametricLIFNode",
    "MultiStepParametricLIFNode", "EIFNode", "MultiStepEIFNode",
]


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
        if not isinstance(surrogate_function, surrogate.SurrogateFunction):
            raise TypeError(
                "surrogate_function must be a flashspike.surrogate module such as surrogate.ATan(), "
                f"got {surrogate_function!r}"
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
            spike_seq, self.v, v_seq = ops.multi_step(self._backend, x_seq, v_init, self.params(), self.store_v_seq,
                                                      self._decay_w())
            if self.store_v_seq:
                self.v_seq = v_seq
            return spike_seq
        backend = backends.resolve(self._backend, x_seq)
        state = self.__dict__  # plain attributes: skip nn.Module.__setattr__ on the hot path
        spike_seq, state["v"], v_seq = backend.multi_step(x_seq, v_init, self.params(), self.store_v_seq,
                                                          self._decay_w())
        if self.store_v_seq:
            state["v_seq"] = v_seq
        return spike_seq

    def _decay_w(self):
        """The learnable tensor the charge reads at run time (PLIF's w), or None."""
        return None

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
            in the backward pass. Defaults to ``surrogate.Sigmoid()``.
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


class _ParametricLIF:
    """PLIF: LIF whose decay 1/tau = sigmoid(w) is learned; ``w`` is an ``nn.Parameter`` initialised
    to −log(init_tau − 1), so that tau starts at ``init_tau``."""

    leaky = False  # (BaseNode keeps no constant tau for it: params() says leaky and parametric)
    _OPTION_NAMES = BaseNode._OPTION_NAMES | {"decay_input"}

    def __init__(self, init_tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, surrogate_function=None,
                 detach_reset=False, **multi_step):
        init_tau = _number("init_tau", init_tau)
        if not init_tau > 1.0:
            raise ValueError(f"init_tau must be greater than 1 (1/tau = sigmoid(w) lies in (0, 1)), got {init_tau!r}")
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset, **multi_step)
        self.decay_input = bool(decay_input)
        self.w = nn.Parameter(torch.as_tensor(-math.log(init_tau - 1.0)))

    def params(self) -> NeuronParams:
        p = self.__dict__.get("_cached_params")
        if p is None:
            p = self.__dict__["_cached_params"] = NeuronParams(
                leaky=True, parametric=True, v_threshold=self.v_threshold, v_reset=self.v_reset,
                detach_reset=self.detach_reset, surrogate=self.surrogate_function, decay_input=self.decay_input)
        return p

    def _decay_w(self):
        return self.w

    def extra_repr(self) -> str:
        with torch.no_grad():
            tau = 1.0 / self.w.sigmoid()
        return super().extra_repr() + f", tau={tau}"


class _ExponentialIF:
    """EIF: H[t] = V[t−1] + (X[t] + v_rest − V[t−1] + delta_T·exp((V[t−1] − theta_rh)/delta_T)) / tau.
    ``v_rest`` is where the leak pulls; a fresh neuron starts at v_reset (0 for soft reset)."""

    leaky = False  # (BaseNode's tau and decay_input do not apply: params() describes the EIF charge)
    _OPTION_NAMES = BaseNode._OPTION_NAMES | {"tau", "delta_T", "theta_rh", "v_rest"}

    def __init__(self, tau=2.0, delta_T=1.0, theta_rh=0.8, v_threshold=1.0, v_rest=0.0, v_reset=-0.1,
                 surrogate_function=None, detach_reset=False, **multi_step):
        tau, delta_T = _number("tau", tau), _number("delta_T", delta_T, positive=True)
        theta_rh, v_rest = _number("theta_rh", theta_rh), _number("v_rest", v_rest)
        if not tau > 1.0:
            raise ValueError(f"tau must be greater than 1, got {tau!r}")
        if v_reset is not None and not (v_threshold > v_reset and v_rest >= v_reset):
            raise ValueError(f"EIF needs v_threshold > v_reset and v_rest >= v_reset, got v_threshold={v_threshold!r}, "
                             f"v_rest={v_rest!r}, v_reset={v_reset!r}")
        self.__dict__["_resting"] = v_rest
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset, **multi_step)
        self.tau, self.delta_T, self.theta_rh, self.v_rest = tau, delta_T, theta_rh, v_rest

    @property
    def v_rest(self) -> float:
        """EIF's resting potential, where the leak pulls V (not where reset() puts it)."""
        return self.__dict__["_resting"]

    @v_rest.setter
    def v_rest(self, value) -> None:
        self.__dict__["_resting"] = _number("v_rest", value)

    def reset(self) -> None:
        super().reset()
        self.__dict__["v"] = 0.0 if self.v_reset is None else self.v_reset

    def params(self) -> NeuronParams:
        p = self.__dict__.get("_cached_params")
        if p is None:
            p = self.__dict__["_cached_params"] = NeuronParams(
                leaky=True, exponential=True, v_threshold=self.v_threshold, v_reset=self.v_reset,
                detach_reset=self.detach_reset, surrogate=self.surrogate_function, tau=self.tau,
                delta_T=self.delta_T, theta_rh=self.theta_rh, resting_potential=self.v_rest)
        return p

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tau={self.tau}, delta_T={self.delta_T}, theta_rh={self.theta_rh}"


_PLIF_DOC = """
        init_tau: the membrane time constant tau at initialization (> 1); 1/tau = sigmoid(w) is learned.
        decay_input: whether the input is multiplied by 1/tau as well."""
_EIF_DOC = """
        tau: the membrane time constant (> 1).
        delta_T: the sharpness of the exponential term (> 0).
        theta_rh: the rheobase potential, where the exponential term equals delta_T.
        v_rest: the resting potential the leak pulls towards."""


class ParametricLIFNode(_ParametricLIF, _SingleStep):
    """Single-step parametric LIF neuron (PLIF): LIF with a learnable decay 1/tau = sigmoid(w)."""

    __doc__ += _NEURON_DOC.format(extra=_PLIF_DOC)

    def __init__(self, init_tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, surrogate_function=None,
                 detach_reset=False):
        super().__init__(init_tau, decay_input, v_threshold, v_reset, surrogate_function, detach_reset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_floating(x, "x")
        decay = torch.sigmoid(self.w.to(x.dtype))
        spike, self.v = neuron_step(x, self._initial_v(x.shape, x), self.params(), decay)
        return spike


class MultiStepParametricLIFNode(_ParametricLIF, _MultiStep):
    """Multi-step parametric LIF neuron (PLIF) on the whole ``[T, N, *]`` sequence per call; ``w``
    receives its gradient from every backend."""

    __doc__ += _NEURON_DOC.format(extra=_PLIF_DOC + _MULTI_DOC)

    def __init__(self, init_tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, surrogate_function=None,
                 detach_reset=False, backend="auto", store_v_seq=False):
        super().__init__(init_tau, decay_input, v_threshold, v_reset, surrogate_function, detach_reset,
                         backend=backend, store_v_seq=store_v_seq)


class EIFNode(_ExponentialIF, _SingleStep):
    """Single-step exponential integrate-and-fire neuron (see :mod:`flashspike.dynamics`)."""

    __doc__ += _NEURON_DOC.format(extra=_EIF_DOC)

    def __init__(self, tau=2.0, delta_T=1.0, theta_rh=0.8, v_threshold=1.0, v_rest=0.0, v_reset=-0.1,
                 surrogate_function=None, detach_reset=False):
        super().__init__(tau, delta_T, theta_rh, v_threshold, v_rest, v_reset, surrogate_function, detach_reset)


class MultiStepEIFNode(_ExponentialIF, _MultiStep):
    """Multi-step exponential integrate-and-fire neuron on the whole ``[T, N, *]`` sequence per call."""

    __doc__ += _NEURON_DOC.format(extra=_EIF_DOC + _MULTI_DOC)

    def __init__(self, tau=2.0, delta_T=1.0, theta_rh=0.8, v_threshold=1.0, v_rest=0.0, v_reset=-0.1,
                 surrogate_function=None, detach_reset=False, backend="auto", store_v_seq=False):
        super().__init__(tau, delta_T, theta_rh, v_threshold, v_rest, v_reset, surrogate_function, detach_reset,
                         backend=backend, store_v_seq=store_v_seq)
