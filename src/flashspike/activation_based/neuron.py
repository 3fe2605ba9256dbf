"""Spiking neurons with a step mode, as SpikingJelly's ``activation_based.neuron``.

Each node is flashspike's own neuron (:mod:`flashspike.neuron`: the same equations, the same fused
kernels and backends) with a step mode: ``step_mode='s'`` runs one time step ``[N, *]`` per call
through charge, fire and reset; ``step_mode='m'`` runs the sequence ``[T, N, *]`` in one call, on the
fused kernels where the neuron has them (IF, LIF, ParametricLIF, EIF). Both modes share the state
``v``. ``backend`` ('auto' by default) is accepted by keyword, as SpikingJelly 0.0.0.0.14's
activation_based nodes take it; SpikingJelly 2.0.0 has no such argument.

``store_v_seq=True`` keeps the potential after every step in ``v_seq`` (``[T, N, *]``); in
single-step mode each call appends its step. Without it ``v_seq`` is None, as in SpikingJelly 2.0.0.

The neurons without fused kernels (QIF, Izhikevich, KLIF, LIAF, and subclasses that override
``neuronal_charge``, ``neuronal_fire`` or ``neuronal_reset``) run those methods once per step in
either mode. The PSN family (:class:`PSN`, :class:`MaskedPSN`, :class:`SlidingPSN`) computes all
steps' charges as one matrix product over time.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import neuron as _core
from .. import surrogate
from . import base

__all__ = ["BaseNode", "AdaptBaseNode", "IFNode", "LIFNode", "ParametricLIFNode", "EIFNode", "QIFNode",
           "IzhikevichNode", "KLIFNode", "LIAFNode", "PSN", "MaskedPSN", "SlidingPSN"]


class BaseNode(base.MemoryModule, _core._MultiStep):
    """Base class of the step-mode neurons: flashspike's :class:`flashspike.neuron.BaseNode` (charge,
    fire, reset on ``self.v``; override ``neuronal_charge`` for a neuron of your own) in step mode
    ``'s'`` or ``'m'``.

    Args:
        v_threshold, v_reset, surrogate_function, detach_reset: as :class:`flashspike.neuron.IFNode`.
        step_mode: ``'s'`` (one step per call) or ``'m'`` (a sequence per call).
        store_v_seq: keep the potential of every step in ``v_seq``.
        backend: (keyword) 'auto', 'torch', 'cupy' or 'triton' for the fused multi-step kernels.
    """

    _warn_step_loop = False  # running overridden methods step by step is what a subclass asks for

    def __init__(self, v_threshold: float = 1.0, v_reset: float | None = 0.0, surrogate_function=None,
                 detach_reset: bool = False, step_mode: str = "s", store_v_seq: bool = False, *,
                 backend: str = "auto"):
        _core._MultiStep.__init__(self, v_threshold, v_reset, surrogate_function, detach_reset, backend=backend,
                                  store_v_seq=store_v_seq)
        self.step_mode = step_mode

    @property
    def v_seq(self) -> torch.Tensor | None:
        """The potential after every step, ``[T, N, *]``, kept with ``store_v_seq=True``; else None."""
        return self.__dict__.get("v_seq")

    @v_seq.setter
    def v_seq(self, value) -> None:
        self.__dict__["v_seq"] = value

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        spike = _core.BaseNode.forward(self, x)
        if self.store_v_seq:
            v_step = self.v.unsqueeze(0)
            kept = self.__dict__.get("v_seq")
            fits = kept is not None and kept.shape[1:] == v_step.shape[1:] and kept.dtype == v_step.dtype
            self.__dict__["v_seq"] = torch.cat((kept, v_step)) if fits else v_step
        return spike

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return _core._MultiStep.forward(self, x_seq)

    def fires_from_unwritten_input(self) -> bool:
        cls = type(self)
        return (self.step_mode == "m" and cls.forward is base.MemoryModule.forward
                and cls.multi_step_forward is BaseNode.multi_step_forward and not self._own_dynamics)

    def extra_repr(self) -> str:
        return (f"v_threshold={self.v_threshold}, v_reset={self.v_reset}, detach_reset={self.detach_reset}, "
                f"step_mode={self.step_mode}, backend={self.backend}" + self._charge_repr())


class IFNode(BaseNode, _core.MultiStepIFNode):
    """Integrate-and-fire neuron: H[t] = V[t−1] + X[t]; fused kernels in step mode ``'m'``."""


class LIFNode(BaseNode, _core.MultiStepLIFNode):
    """Leaky integrate-and-fire neuron (see :mod:`flashspike.dynamics`); fused kernels in step mode ``'m'``."""

    def __init__(self, tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: float | None = 0.0, surrogate_function=None, detach_reset: bool = False,
                 step_mode: str = "s", store_v_seq: bool = False, *, backend: str = "auto"):
        _core._MultiStep.__init__(self, v_threshold, v_reset, surrogate_function, detach_reset, tau, decay_input,
                                  backend=backend, store_v_seq=store_v_seq)
        self.step_mode = step_mode


class ParametricLIFNode(BaseNode, _core.MultiStepParametricLIFNode):
    """Parametric LIF (PLIF): LIF with a learned decay 1/tau = sigmoid(w), parameter ``w``; fused
    kernels in step mode ``'m'`` (they also give dL/dw)."""

    def __init__(self, init_tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: float | None = 0.0, surrogate_function=None, detach_reset: bool = False,
                 step_mode: str = "s", store_v_seq: bool = False, *, backend: str = "auto"):
        _core.MultiStepParametricLIFNode.__init__(self, init_tau, decay_input, v_threshold, v_reset,
                                                  surrogate_function, detach_reset, backend, store_v_seq)
        self.step_mode = step_mode


class EIFNode(BaseNode, _core.MultiStepEIFNode):
    """Exponential integrate-and-fire neuron (see :mod:`flashspike.dynamics`); fused kernels in step
    mode ``'m'``."""

    def __init__(self, tau: float = 2.0, delta_T: float = 1.0, theta_rh: float = 0.8, v_threshold: float = 1.0,
                 v_rest: float = 0.0, v_reset: float | None = -0.1, surrogate_function=None,
                 detach_reset: bool = False, step_mode: str = "s", store_v_seq: bool = False, *,
                 backend: str = "auto"):
        _core.MultiStepEIFNode.__init__(self, tau, delta_T, theta_rh, v_threshold, v_rest, v_reset,
                                        surrogate_function, detach_reset, backend, store_v_seq)
        self.step_mode = step_mode


class QIFNode(BaseNode, _core.QIFNode):
    """Quadratic integrate-and-fire neuron (:class:`flashspike.neuron.QIFNode`), step by step in either mode."""

    def __init__(self, tau: float = 2.0, v_c: float = 0.8, a0: float = 1.0, v_threshold: float = 1.0,
                 v_rest: float = 0.0, v_reset: float | None = -0.1, surrogate_function=None,
                 detach_reset: bool = False, step_mode: str = "s", store_v_seq: bool = False, *,
                 backend: str = "auto"):
        _core._MultiStep.__init__(self, tau, v_c, a0, v_threshold, v_rest, v_reset, surrogate_function, detach_reset,
                                  backend=backend, store_v_seq=store_v_seq)
        self.step_mode = step_mode

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tau={self.tau}, v_c={self.v_c}, a0={self.a0}, v_rest={self.v_rest}"


def _reset_with(h, spike, v_threshold, v_reset):
    """V[t] from H[t] and S[t] for a threshold that may be a tensor (KLIF's scaled reset)."""
    if v_reset is None:
        return h - v_threshold * spike
    return h * (1.0 - spike) + v_reset * spike


class AdaptBaseNode(BaseNode):
    """A neuron with an adaptation current ``w`` (a memory, ``w_rest`` after ``reset()``), fed by the
    charged potential and the spike: W[t] = W[t−1] + (a·(H[t] − v_rest) − W[t−1]) / tau_w + b·S[t].
    Subclasses subtract ``w`` in their charge (see :class:`IzhikevichNode`)."""

    def __init__(self, v_threshold: float = 1.0, v_reset: float | None = 0.0, v_rest: float = 0.0,
                 w_rest: float = 0.0, tau_w: float = 2.0, a: float = 0.0, b: float = 0.0, surrogate_function=None,
                 detach_reset: bool = False, step_mode: str = "s", store_v_seq: bool = False, *,
                 backend: str = "auto"):
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset, step_mode, store_v_seq,
                         backend=backend)
        self.register_memory("w", _core._number("w_rest", w_rest))
        self.w_rest = w_rest
        self.v_rest = _core._number("v_rest", v_rest)
        self.tau_w = _core._positive("tau_w", tau_w)
        self.a = _core._number("a", a)
        self.b = _core._number("b", b)

    def _start_steps(self, step: torch.Tensor) -> None:
        super()._start_steps(step)
        w = self.w
        if not isinstance(w, torch.Tensor) or w.shape != step.shape:
            self.w = torch.full_like(step, self.w_rest)
        elif w.dtype != step.dtype:
            self.w = w.to(step.dtype)

    def neuronal_adaptation(self, spike: torch.Tensor) -> None:
        """W[t−1] -> W[t] from the charged potential (still in ``self.v``) and the spike."""
        self.w = self.w + (self.a * (self.v - self.v_rest) - self.w) / self.tau_w + self.b * spike

    def neuronal_reset(self, spike: torch.Tensor) -> None:
        self.neuronal_adaptation(spike)
        super().neuronal_reset(spike)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", v_rest={self.v_rest}, w_rest={self.w_rest}, tau_w={self.tau_w}, "
                f"a={self.a}, b={self.b}")


class IzhikevichNode(AdaptBaseNode):
    """Izhikevich neuron: H[t] = V[t−1] + (X[t] + a0·(V[t−1] − v_rest)·(V[t−1] − v_c) − W[t−1]) / tau,
    with the adaptation of :class:`AdaptBaseNode`; step by step in either mode."""

    def __init__(self, tau: float = 2.0, v_c: float = 0.8, a0: float = 1.0, v_threshold: float = 1.0,
                 v_reset: float | None = 0.0, v_rest: float = -0.1, w_rest: float = 0.0, tau_w: float = 2.0,
                 a: float = 0.0, b: float = 0.0, surrogate_function=None, detach_reset: bool = False,
                 step_mode: str = "s", store_v_seq: bool = False, *, backend: str = "auto"):
        super().__init__(v_threshold, v_reset, v_rest, w_rest, tau_w, a, b, surrogate_function, detach_reset,
                         step_mode, store_v_seq, backend=backend)
        self.tau = _core._positive("tau", tau)
        self.v_c = _core._number("v_c", v_c)
        self.a0 = _core._positive("a0", a0)

    def neuronal_charge(self, x: torch.Tensor) -> None:
        v = self.v
        self.v = v + (x + self.a0 * (v - self.v_rest) * (v - self.v_c) - self.w) / self.tau

    def _charge_repr(self) -> str:
        return f", tau={self.tau}, v_c={self.v_c}, a0={self.a0}"


class KLIFNode(BaseNode, _core.MultiStepLIFNode):
    """KLIF (arXiv:2302.09238): LIF's charge, then H[t] = relu(k·H[t]) with a learned scale ``k``
    (a parameter, 1 at the start). With ``scale_reset`` the reset acts on H/k with threshold
    v_threshold/k. Step by step in either mode."""

    def __init__(self, scale_reset: bool = False, tau: float = 2.0, decay_input: bool = True,
                 v_threshold: float = 1.0, v_reset: float | None = 0.0, surrogate_function=None,
                 detach_reset: bool = False, step_mode: str = "s", store_v_seq: bool = False, *,
                 backend: str = "auto"):
        _core._MultiStep.__init__(self, v_threshold, v_reset, surrogate_function, detach_reset, tau, decay_input,
                                  backend=backend, store_v_seq=store_v_seq)
        self.step_mode = step_mode
        self.scale_reset = _core._flag("scale_reset", scale_reset)
        self.k = nn.Parameter(torch.as_tensor(1.0))

    def neuronal_charge(self, x: torch.Tensor) -> None:
        super().neuronal_charge(x)
        self.v = torch.relu(self.k * self.v)

    def neuronal_reset(self, spike: torch.Tensor) -> None:
        spike = spike.detach() if self.detach_reset else spike
        if self.scale_reset:
            self.v = _reset_with(self.v / self.k, spike, self.v_threshold / self.k, self.v_reset)
        else:
            self.v = _reset_with(self.v, spike, self.v_threshold, self.v_reset)


class LIAFNode(LIFNode):
    """Leaky integrate and analog fire (:class:`flashspike.neuron.LIAFNode`): charges, fires and
    resets as :class:`LIFNode` but outputs ``act(H[t] − v_threshold)`` (``threshold_related``) or
    ``act(H[t])``. ``*args, **kwargs`` are :class:`LIFNode`'s."""

    def __init__(self, act, threshold_related: bool, *args, **kwargs):
        if not callable(act):
            raise TypeError(f"act must be callable (a function or module), got {act!r}")
        super().__init__(*args, **kwargs)
        self.act = act
        self.threshold_related = _core._flag("threshold_related", threshold_related)

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _core.LIAFNode.forward(self, x)
        if self.store_v_seq:
            kept = self.__dict__.get("v_seq")
            v_step = self.v.unsqueeze(0)
            self.__dict__["v_seq"] = v_step if kept is None or kept.shape[1:] != v_step.shape[1:] else torch.cat(
                (kept, v_step))
        return y

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if self.store_v_seq:
            self.v_seq = None
        return base.MemoryModule.multi_step_forward(self, x_seq)


# ----------------------------------------------------------------------------------------------------
# Parallel spiking neurons (Fang et al., "Parallel Spiking Neurons with High Efficiency and Ability to
# Learn Long-term Dependencies", arXiv:2304.12760): H = W·X + b over time, S = Θ(H); no reset.
# ----------------------------------------------------------------------------------------------------


def _psn_weights(T: int) -> tuple[nn.Parameter, nn.Parameter]:
    """A [T, T] weight (nn.Linear's initialization) and a [T, 1] bias of −1."""
    weight = torch.empty(T, T)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return nn.Parameter(weight), nn.Parameter(torch.full((T, 1), -1.0))


def _over_time(weight: torch.Tensor, bias: torch.Tensor, x_seq: torch.Tensor) -> torch.Tensor:
    """H = bias + weight·X with X the sequence as [T, everything else]."""
    return torch.addmm(bias, weight, x_seq.flatten(1)).view(x_seq.shape)


def _surrogate_or_atan(surrogate_function):
    return surrogate.ATan() if surrogate_function is None else surrogate_function


class PSN(nn.Module, base.MultiStepModule):
    """Parallel spiking neuron over a fixed T: S = Θ(W·X + b) with a learned [T, T] weight and [T, 1]
    bias; multi-step only (``[T, N, *]``)."""

    def __init__(self, T: int, surrogate_function=None):
        super().__init__()
        self.T = T
        self.surrogate_function = _surrogate_or_atan(surrogate_function)
        self.weight, self.bias = _psn_weights(T)
        self.step_mode = "m"

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.surrogate_function(_over_time(self.weight, self.bias, x_seq))

    def extra_repr(self) -> str:
        return f"T={self.T}, "


class MaskedPSN(base.MemoryModule):
    """PSN whose weight sees only the last ``k`` steps once ``lambda_`` reaches 1: the weight is
    (λ·mask_k + (1 − λ)·1)·W, mask_k the band of the k latest steps. Step mode ``'m'`` needs T steps;
    step mode ``'s'`` needs λ ≥ 1 and runs at most T steps between resets."""

    def __init__(self, k: int, T: int, lambda_init: float = 0.0, surrogate_function=None, step_mode: str = "s"):
        super().__init__()
        self.register_memory("time_step", 0)
        self.register_memory("queue", [])
        self.step_mode = step_mode
        self.k = k
        self.T = T
        self.surrogate_function = _surrogate_or_atan(surrogate_function)
        self.register_buffer("_lambda_", torch.as_tensor(lambda_init))
        self.weight, self.bias = _psn_weights(T)
        ones = torch.ones(T, T)
        self.register_buffer("mask0", torch.tril(ones) * torch.triu(ones, -(k - 1)))
        self.register_buffer("mask1", ones)

    @property
    def lambda_(self) -> torch.Tensor:
        return self._lambda_

    @lambda_.setter
    def lambda_(self, value: float) -> None:
        self._lambda_.fill_(value)

    @staticmethod
    def gen_masked_weight(lambda_, mask0, mask1, weight):
        return (lambda_ * mask0 + (1.0 - lambda_) * mask1) * weight

    def masked_weight(self) -> torch.Tensor:
        if self.lambda_ >= 1.0:
            return self.weight * self.mask0
        return self.gen_masked_weight(self.lambda_, self.mask0, self.mask1, self.weight)

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lambda_ < 1.0:
            raise ValueError("MaskedPSN runs in single-step mode only once lambda_ >= 1 (the weight then sees "
                             f"the last k steps); lambda_ is {float(self.lambda_)}")
        t = self.time_step
        if t + 1 > self.T:
            raise OverflowError(f"MaskedPSN(T={self.T}) has run {t + 1} steps; call reset() after T steps")
        queue = (self.queue + [x.flatten()])[-self.k:]
        weight = self.masked_weight()[t, t + 1 - len(queue):t + 1]
        h = (weight.unsqueeze(-1) * torch.stack(queue)).sum(0)
        self.queue, self.time_step = queue, t + 1
        return self.surrogate_function(h + self.bias[t]).view(x.shape)

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if x_seq.shape[0] != self.T:
            raise ValueError(f"MaskedPSN(T={self.T}) expects x_seq of {self.T} steps, got shape {tuple(x_seq.shape)}")
        return self.surrogate_function(_over_time(self.masked_weight(), self.bias, x_seq))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", lambda_={self.lambda_}, T={self.T}"


class SlidingPSN(base.MemoryModule):
    """PSN over a sliding window of the last ``k`` steps, for any T: H[t] = Σ_i weight[i]·X[t−k+1+i] +
    bias. ``exp_init`` starts the weights at 2^−(k−1), ..., 1/2, 1 (else nn.Linear's initialization)."""

    def __init__(self, k: int, exp_init: bool = True, surrogate_function=None, step_mode: str = "s"):
        super().__init__()
        self.register_memory("queue", [])
        self.step_mode = step_mode
        self.k = k
        self.surrogate_function = _surrogate_or_atan(surrogate_function)
        if exp_init:
            weight = 0.5 ** torch.arange(k - 1, -1, -1, dtype=torch.float32)
        else:
            weight = torch.empty(1, k)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            weight = weight[0]
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.as_tensor(-1.0))

    def gen_gemm_weight(self, T: int) -> torch.Tensor:
        """The [T, T] banded matrix that applies the window to a whole sequence at once."""
        weight = torch.zeros(T, T, device=self.weight.device, dtype=self.weight.dtype)
        for i in range(T):
            start = max(0, i + 1 - self.k)
            weight[i, start:i + 1] = self.weight[self.k - (i + 1 - start):]
        return weight

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        queue = (self.queue + [x.flatten()])[-self.k:]
        h = (self.weight[self.k - len(queue):].unsqueeze(-1) * torch.stack(queue)).sum(0)
        self.queue = queue
        return self.surrogate_function(h + self.bias).view(x.shape)

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.surrogate_function(_over_time(self.gen_gemm_weight(x_seq.shape[0]), self.bias, x_seq))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", order={self.k}"
