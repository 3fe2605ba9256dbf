"""Surrogate gradient functions.

With ``spiking=True`` a surrogate module is the Heaviside step in the forward pass and uses the
derivative g'(x) of a smooth primitive g in the backward pass. With ``spiking=False`` the module is
g(x) itself, differentiated by autograd.

Each surrogate states its primitive and derivative exactly once, as functions of ``(x, alpha, m)``
where ``m`` is a math namespace (see :mod:`flashspike.codegen`): the reference backend evaluates them
with PyTorch, and the kernel backends generate their CUDA and Triton code from the same functions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .codegen import TORCH

__all__ = ["SurrogateFunction", "ATan", "Sigmoid", "PiecewiseQuadratic", "SoftSign", "heaviside"]


def heaviside(x, m):
    """Θ(x): 1 where x >= 0, else 0; NaN stays NaN so a diverging net is visible in its output."""
    return m.where(x >= 0.0, 1.0, m.where(x < 0.0, 0.0, x))


class _SurrogateSpike(torch.autograd.Function):
    """Heaviside forward, the surrogate's derivative backward: one Function for every surrogate."""

    @staticmethod
    def forward(ctx, x, surrogate):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return heaviside(x, TORCH)

    @staticmethod
    def backward(ctx, grad_spike):
        (x,) = ctx.saved_tensors
        return grad_spike * ctx.surrogate.derivative_of(x), None


class SurrogateFunction(nn.Module):
    """Base class: subclasses define ``default_alpha``, ``primitive`` and ``derivative``."""

    default_alpha: float

    def __init__(self, alpha: float | None = None, spiking: bool = True):
        super().__init__()
        alpha = self.default_alpha if alpha is None else alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"{type(self).__name__}: alpha must be a positive number, got {alpha!r}")
        self.alpha = float(alpha)
        self.spiking = bool(spiking)

    @staticmethod
    def primitive(x, alpha: float, m):
        """g(x), the smooth function whose derivative stands in for the step's."""
        raise NotImplementedError

    @staticmethod
    def derivative(x, alpha: float, m):
        """g'(x), used as dΘ/dx in the backward pass."""
        raise NotImplementedError

    def derivative_of(self, x: torch.Tensor) -> torch.Tensor:
        """g'(x) as a tensor of x's dtype, computed in at least float32."""
        wide = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return self.derivative(wide, self.alpha, TORCH).to(x.dtype)

    @property
    def key(self) -> tuple:
        """What identifies the formula for a kernel cache: the class and alpha."""
        return (type(self).__qualname__, self.alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spiking:
            return _SurrogateSpike.apply(x, self)
        return self.primitive(x, self.alpha, TORCH)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, spiking={self.spiking}"


class ATan(SurrogateFunction):
    """g(x) = arctan(π/2·α·x)/π + 1/2, g'(x) = (α/2) / (1 + (π/2·α·x)²)."""

    default_alpha = 2.0

    def __init__(self, alpha: float = 2.0, spiking: bool = True):
        super().__init__(alpha, spiking)

    @staticmethod
    def primitive(x, alpha, m):
        return m.atan(math.pi / 2 * alpha * x) / math.pi + 0.5

    @staticmethod
    def derivative(x, alpha, m):
        return (alpha / 2) / (1.0 + (math.pi / 2 * alpha * x) ** 2)


class Sigmoid(SurrogateFunction):
    """g(x) = sigmoid(α·x), g'(x) = α·sigmoid(αx)·(1 − sigmoid(αx))."""

    default_alpha = 4.0

    def __init__(self, alpha: float = 4.0, spiking: bool = True):
        super().__init__(alpha, spiking)

    @staticmethod
    def primitive(x, alpha, m):
        return m.sigmoid(alpha * x)

    @staticmethod
    def derivative(x, alpha, m):
        s = m.let("sigmoid", m.sigmoid(alpha * x))
        return alpha * s * (1.0 - s)


class PiecewiseQuadratic(SurrogateFunction):
    """g'(x) = 0 for |x| > 1/α, else α − α²·|x|; g is its integral (0 below −1/α, 1 above 1/α)."""

    default_alpha = 1.0

    def __init__(self, alpha: float = 1.0, spiking: bool = True):
        super().__init__(alpha, spiking)

    @staticmethod
    def primitive(x, alpha, m):
        inner = -(alpha * alpha / 2) * x * m.abs(x) + alpha * x + 0.5
        return m.where(x > 1.0 / alpha, 1.0, m.where(x < -1.0 / alpha, 0.0, inner))

    @staticmethod
    def derivative(x, alpha, m):
        ax = m.let("abs_x", m.abs(x))
        return m.where(ax > 1.0 / alpha, 0.0, alpha - alpha * alpha * ax)


class SoftSign(SurrogateFunction):
    """g(x) = (α·x / (1 + |α·x|) + 1) / 2, g'(x) = α / (2·(1 + |α·x|)²)."""

    default_alpha = 2.0

    def __init__(self, alpha: float = 2.0, spiking: bool = True):
        super().__init__(alpha, spiking)

    @staticmethod
    def primitive(x, alpha, m):
        return 0.5 * (alpha * x / (1.0 + m.abs(alpha * x)) + 1.0)

    @staticmethod
    def derivative(x, alpha, m):
        return (alpha / 2) / (1.0 + m.abs(alpha * x)) ** 2
