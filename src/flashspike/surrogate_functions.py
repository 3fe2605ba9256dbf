"""Surrogates as SpikingJelly writes them by hand: lower-case ``torch.autograd.Function`` s
(``atan.apply(x, alpha)``: the step forward, the surrogate's slope backward) and the base classes of
surrogates whose ``spiking_function`` / ``primitive_function`` a user writes.

The autograd Functions take their slope from the surrogate classes of :mod:`flashspike.surrogate`, so
each formula is still written once. A surrogate built on the base classes is an ordinary module:
neurons take it with backend 'torch' (and 'auto', which then picks 'torch'); the kernel backends
need formulas (a :class:`flashspike.surrogate.SurrogateFunction`).
"""

from __future__ import annotations

import torch
from torch import nn

from . import surrogate as _formulas
from .codegen import TORCH

__all__ = ["SurrogateFunctionBase", "MultiArgsSurrogateFunctionBase", "piecewise_quadratic", "piecewise_exp",
           "sigmoid", "soft_sign", "atan", "nonzero_sign_log_abs", "erf", "piecewise_leaky_relu",
           "squarewave_fourier_series", "s2nn", "q_pseudo_spike"]


def _autograd_function(name: str, surrogate_class: type) -> type:
    """``name.apply(x, *hyper_parameters)``: Θ(x) forward, ``surrogate_class.derivative`` backward."""

    def forward(ctx, x, *values):
        if x.requires_grad:
            ctx.save_for_backward(x)
            ctx.values = values
        return _formulas.heaviside(x, TORCH)

    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        slope = surrogate_class.derivative(x, *ctx.values, TORCH)
        return (grad_output * slope, *([None] * len(ctx.values)))

    doc = (f"``{name}.apply(x, {', '.join(surrogate_class.hyperparameters)})``: the Heaviside step forward, the "
           f"slope of :class:`flashspike.surrogate.{surrogate_class.__name__}` backward.")
    return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward), "backward": staticmethod(backward),
                                                   "__module__": __name__, "__qualname__": name, "__doc__": doc})


piecewise_quadratic = _autograd_function("piecewise_quadratic", _formulas.PiecewiseQuadratic)
piecewise_exp = _autograd_function("piecewise_exp", _formulas.PiecewiseExp)
sigmoid = _autograd_function("sigmoid", _formulas.Sigmoid)
soft_sign = _autograd_function("soft_sign", _formulas.SoftSign)
atan = _autograd_function("atan", _formulas.ATan)
nonzero_sign_log_abs = _autograd_function("nonzero_sign_log_abs", _formulas.NonzeroSignLogAbs)
erf = _autograd_function("erf", _formulas.Erf)
piecewise_leaky_relu = _autograd_function("piecewise_leaky_relu", _formulas.PiecewiseLeakyReLU)
squarewave_fourier_series = _autograd_function("squarewave_fourier_series", _formulas.SquarewaveFourierSeries)
s2nn = _autograd_function("s2nn", _formulas.S2NN)
q_pseudo_spike = _autograd_function("q_pseudo_spike", _formulas.QPseudoSpike)


class _HandWritten(nn.Module):
    """A surrogate module whose subclass writes ``spiking_function`` and ``primitive_function``."""

    def set_spiking_mode(self, spiking: bool) -> None:
        self.spiking = spiking

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args, kwargs = self._arguments()
        function = self.spiking_function if self.spiking else self.primitive_function
        return function(x, *args, **kwargs)

    @staticmethod
    def spiking_function(x, *args, **kwargs):
        """Θ(x) forward with the surrogate's slope backward, e.g. ``atan.apply(x, alpha)``."""
        raise NotImplementedError

    @staticmethod
    def primitive_function(x, *args, **kwargs):
        """The smooth function g(x) itself (``spiking=False``)."""
        raise NotImplementedError


class SurrogateFunctionBase(_HandWritten):
    """Base of a hand-written surrogate with one hyper-parameter ``alpha`` (SpikingJelly 0.0.0.0.14's
    ``SurrogateFunctionBase(alpha, spiking=True)``): ``forward`` calls ``spiking_function(x, alpha)``
    or, with ``spiking=False``, ``primitive_function(x, alpha)``."""

    def __init__(self, alpha, spiking: bool = True):
        super().__init__()
        self.spiking = spiking
        self.alpha = alpha

    def _arguments(self):
        return (self.alpha,), {}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, spiking={self.spiking}"


class MultiArgsSurrogateFunctionBase(_HandWritten):
    """Base of a hand-written surrogate with several hyper-parameters (SpikingJelly 0.0.0.0.14's
    ``MultiArgsSurrogateFunctionBase(spiking, *args, **kwargs)``): a subclass stores them and defines
    ``forward`` (or ``hyper_parameters()``, the positional arguments its functions take after ``x``)."""

    def __init__(self, spiking: bool, *args, **kwargs):
        super().__init__()
        self.spiking = spiking

    def hyper_parameters(self) -> tuple:
        raise NotImplementedError(f"{type(self).__name__} defines neither forward nor hyper_parameters()")

    def _arguments(self):
        return self.hyper_parameters(), {}


class KeywordSurrogateFunctionBase(_HandWritten):
    """Base of a hand-written surrogate whose hyper-parameters are given by name (SpikingJelly 2.x's
    ``SurrogateFunctionBase(spiking=True, **kwargs)``): ``forward`` calls ``spiking_function(x, **kwargs)``
    or ``primitive_function(x, **kwargs)`` with their current values."""

    def __init__(self, spiking: bool = True, **kwargs):
        super().__init__()
        self.spiking = spiking
        self._sg_param_names = tuple(kwargs)
        for name, value in kwargs.items():
            setattr(self, name, value)

    def _arguments(self):
        return (), {name: getattr(self, name) for name in self._sg_param_names}

    def extra_repr(self) -> str:
        return ", ".join([f"{name}={getattr(self, name)}" for name in self._sg_param_names]
                         + [f"spiking={self.spiking}"])
