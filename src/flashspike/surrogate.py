"""Surrogate gradient functions, with the names, arguments, defaults and behaviour of SpikingJelly's
``clock_driven.surrogate``.

With ``spiking=True`` a surrogate module is the Heaviside step Θ(x) in the forward pass and uses a
smooth slope g'(x) in the backward pass. With ``spiking=False`` the module is the smooth primitive
g(x) itself, differentiated as such. Every backend ('torch', 'cupy', 'triton', compiled or not)
computes both modes.

Each surrogate states its formulas exactly once, as plain functions of the input ``x``, its
hyper-parameters (in the order of ``hyperparameters``) and a math namespace ``m`` (see
:mod:`flashspike.codegen`):

- ``primitive(x, ..., m)``: g(x), the output with ``spiking=False``;
- ``derivative(x, ..., m)``: the slope the backward pass uses with ``spiking=True``;
- ``primitive_derivative(x, ..., m)``: the slope of g itself, used with ``spiking=False``; it is
  ``derivative`` unless the two disagree (they do in SpikingJelly's PiecewiseLeakyReLU and S2NN, and
  flashspike matches each of SpikingJelly's functions as it is).

The reference backend evaluates them with PyTorch; the kernel backends generate CUDA and Triton
code from the same functions, so no backend restates a formula.

A surrogate of your own is a subclass that names its hyper-parameters with a validation rule each
and states its formulas; it then runs on every backend::

    import math
    from flashspike import surrogate

    class Gaussian(surrogate.SurrogateFunction):
        \"\"\"g'(x) = exp(−x²/(2σ²)) / (σ·√(2π)); g(x) = (1 + erf(x / (σ·√2))) / 2.\"\"\"

        hyperparameters = {"sigma": surrogate.POSITIVE}

        def __init__(self, sigma: float = 0.5, spiking: bool = True):
            super().__init__(spiking, sigma=sigma)

        @staticmethod
        def primitive(x, sigma, m):
            return 0.5 * (1.0 + m.erf(x / (sigma * math.sqrt(2.0))))

        @staticmethod
        def derivative(x, sigma, m):
            return m.exp(-(x * x) / (2 * sigma * sigma)) / (sigma * math.sqrt(2 * math.pi))

Formulas use arithmetic, comparisons and ``m``'s functions (``exp``, ``log``, ``sqrt``, ``abs``,
``sin``, ``cos``, ``atan``, ``erf``, ``erfc``, ``sigmoid``, ``pow(base, k)`` with a positive base and
a constant k, ``where(cond, a, b)``), never Python ``if`` on ``x`` or torch calls; ``m.let(name,
value)`` makes generated code compute a value once. Hyper-parameters are checked when set, at
construction and on assignment (``sg.sigma = 0.2``), against their :class:`Rule` (``POSITIVE``,
``NON_NEGATIVE``, ``ABOVE_ONE``, ``INTEGER_AT_LEAST_2``, or ``Rule(test, "what it asks for")``); a
kernel backend reads them at every call, so an assignment reaches the next call's kernels. Define
``primitive_derivative`` too when the backward slope is not the primitive's own. Generated kernels are
kept by what the formulas compute (a digest of their generated text), not by the class's name: a class
defined again with another formula (a notebook cell edited and run again) gets kernels of its own.

Any other callable (a lambda, an ``nn.Module``) may serve as a neuron's ``surrogate_function`` on the
'torch' backend; the kernel backends need formulas they can compile and refuse it.
"""

from __future__ import annotations

import ast
import hashlib
import math
import weakref
from typing import Callable, NamedTuple

import torch
from torch import nn

from .codegen import FORMULA, TORCH, Emitter, var

__all__ = [
    "SurrogateFunction", "Rule", "POSITIVE", "NON_NEGATIVE", "ABOVE_ONE", "INTEGER_AT_LEAST_2", "heaviside",
    "PiecewiseQuadratic", "PiecewiseExp", "Sigmoid", "SoftSign", "ATan", "NonzeroSignLogAbs", "Erf",
    "PiecewiseLeakyReLU", "SquarewaveFourierSeries", "S2NN", "QPseudoSpike",
    # SpikingJelly's hand-written style (flashspike.surrogate_functions)
    "SurrogateFunctionBase", "MultiArgsSurrogateFunctionBase", "piecewise_quadratic", "piecewise_exp", "sigmoid",
    "soft_sign", "atan", "nonzero_sign_log_abs", "erf", "piecewise_leaky_relu", "squarewave_fourier_series", "s2nn",
    "q_pseudo_spike",
]


def heaviside(x, m=TORCH):
    """Θ(x): 1 where x >= 0, else 0; NaN stays NaN so a diverging net is visible in its output. ``m`` is
    the math namespace of the formula (tensors by default)."""
    return m.where(x >= 0.0, 1.0, m.where(x < 0.0, 0.0, x))


def _magnitude(x, m):
    """|x| with slope +1 at 0 (sign(0) = +1, as SpikingJelly's primitives take it): autograd's abs has
    slope 0 there, which would zero the primitive's gradient at x = 0."""
    return m.where(x >= 0.0, x, -x)


class Rule(NamedTuple):
    """A hyper-parameter's constraint: ``test(value)`` must hold; ``expected`` says what it asks for."""

    test: Callable[[float], bool]
    expected: str
    integer: bool = False


POSITIVE = Rule(lambda v: v > 0, "a positive finite number")
NON_NEGATIVE = Rule(lambda v: v >= 0, "a finite number >= 0")
ABOVE_ONE = Rule(lambda v: v > 1, "a finite number > 1")
INTEGER_AT_LEAST_2 = Rule(lambda v: v >= 2, "an integer >= 2", integer=True)


def _checked(owner: str, name: str, rule: Rule, value):
    """``value`` if it obeys ``rule``; kept as given (an int stays an int, as SpikingJelly prints it)."""
    allowed = (int,) if rule.integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed) or not math.isfinite(value) or not rule.test(value):
        raise ValueError(f"{owner}: {name} must be {rule.expected}, got {value!r}")
    return value


class _SurrogateSpike(torch.autograd.Function):
    """Heaviside forward, the surrogate's derivative backward: one Function for every surrogate."""

    @staticmethod
    def forward(ctx, x, surrogate):
        ctx.save_for_backward(x)
        # The values of this call: assigning a hyper-parameter before backward changes nothing here.
        ctx.surrogate, ctx.values = surrogate, surrogate.values()
        return heaviside(x, TORCH)

    @staticmethod
    def backward(ctx, grad_spike):
        (x,) = ctx.saved_tensors
        return grad_spike * ctx.surrogate.derivative_of(x, ctx.values), None


class SurrogateFunction(nn.Module):
    """Base class: a subclass sets ``hyperparameters`` (name -> :class:`Rule`, in the formulas'
    argument order) and defines ``primitive`` and ``derivative`` (and ``primitive_derivative`` where
    the slope of the primitive is not ``derivative``); its constructor passes the values by name.

    ``spiking`` is the mode as last assigned; ``in_spiking_mode`` the one the module runs in (they
    differ only for a class with ``mode_fixed_at_construction``)."""

    hyperparameters: dict = {"alpha": POSITIVE}
    # Whether the mode (step or primitive) is the one given at construction for good, as SpikingJelly
    # 0.0.0.0.14's surrogates of several hyper-parameters choose their forward function once: ``spiking``
    # may still be assigned and read, but changes nothing. Otherwise the mode follows ``spiking``.
    mode_fixed_at_construction = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        named = _CLASSES.setdefault(_name_of(cls), [])
        named[:] = [ref for ref in named if ref() is not None]  # classes of this name collected since
        named.append(weakref.ref(cls))

    def __init__(self, spiking: bool = True, **values):
        super().__init__()
        if set(values) != set(self.hyperparameters):
            raise TypeError(f"{type(self).__name__} takes the hyper-parameters {list(self.hyperparameters)}, "
                            f"got {sorted(values)}")
        for name in self.hyperparameters:
            setattr(self, name, values[name])
        self.spiking = spiking

    def __setattr__(self, name, value):
        rule = type(self).hyperparameters.get(name)
        if rule is not None:
            value = _checked(type(self).__name__, name, rule, value)
        elif name == "spiking":
            if not isinstance(value, bool):
                raise TypeError(f"{type(self).__name__}: spiking must be True or False, got {value!r}")
            if not (self.mode_fixed_at_construction and "in_spiking_mode" in self.__dict__):
                super().__setattr__("in_spiking_mode", value)
        super().__setattr__(name, value)
        if rule is not None or name == "spiking":
            self._identify()

    def _identify(self) -> None:
        """Keep :attr:`key` and :attr:`text` in step with the mode and hyper-parameters, as plain values
        made at each change rather than when read: compiled code reads them while it traces, and there a
        number assigned since the last compile may be symbolic, which no text can hold."""
        state = self.__dict__
        if "in_spiking_mode" not in state or any(name not in state for name in self.hyperparameters):
            return  # still being built
        cls = type(self)
        name, values = _name_of(cls), self.values()
        # The digest depends on the class, the mode and the values only: rendered once for each of them
        # (a class defined again has a memo of its own).
        memo = cls.__dict__.get("_digests")
        if memo is None:
            memo = {}
            type.__setattr__(cls, "_digests", memo)
        floats = tuple(map(float, values))
        spiking = self.in_spiking_mode  # the mode the module runs in (a class may fix it at construction)
        digest = memo.get((spiking, floats))
        if digest is None:
            digest = memo[(spiking, floats)] = _formula_digest(self)
        state["_key"] = (name, spiking, tuple(zip(self.hyperparameters, floats)), digest)
        arguments = "".join(f";{hyper}={value!r}" for hyper, value in zip(self.hyperparameters, values))
        state["_text"] = f"{name}(spiking={spiking!r}{arguments})#{digest}"

    def __setstate__(self, state):
        # A surrogate saved whole (torch.save of a model) before in_spiking_mode existed runs as it did.
        state.setdefault("in_spiking_mode", state.get("spiking", True))
        super().__setstate__(state)

    def set_spiking_mode(self, spiking: bool) -> None:
        """Switch between the step (True) and the smooth primitive (False), as ``sg.spiking = ...``
        (which a class with ``mode_fixed_at_construction`` records without switching)."""
        self.spiking = spiking

    @classmethod
    def rebuilt(cls, spiking: bool, values: dict) -> "SurrogateFunction":
        """An instance with these hyper-parameters, made without calling the subclass's constructor
        (whose signature is the subclass's own business)."""
        sg = cls.__new__(cls)
        SurrogateFunction.__init__(sg, spiking, **values)
        return sg

    def values(self) -> tuple:
        """The hyper-parameters' current values, in the formulas' argument order."""
        return tuple(getattr(self, name) for name in self.hyperparameters)

    @staticmethod
    def primitive(x, *args):
        """g(x), the smooth function standing in for the step; ``args`` are the hyper-parameters, then m."""
        raise NotImplementedError

    @staticmethod
    def derivative(x, *args):
        """The slope used as dΘ/dx in the backward pass (``spiking=True``)."""
        raise NotImplementedError

    @classmethod
    def primitive_derivative(cls, x, *args):
        """g'(x), the slope of the primitive (``spiking=False``); ``derivative`` unless overridden."""
        return cls.derivative(x, *args)

    def output(self, x, m):
        """The module's output as a formula: Θ(x), or g(x) with ``spiking=False``."""
        return heaviside(x, m) if self.in_spiking_mode else self.primitive(x, *self.values(), m)

    def output_slope(self, x, m):
        """The slope of :meth:`output` that the backward pass uses."""
        if self.in_spiking_mode:
            return self.derivative(x, *self.values(), m)
        return self.primitive_derivative(x, *self.values(), m)

    def derivative_of(self, x: torch.Tensor, values: tuple | None = None) -> torch.Tensor:
        """The backward slope at ``x`` as a tensor of x's dtype, computed in at least float32."""
        wide = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return self.derivative(wide, *(self.values() if values is None else values), TORCH).to(x.dtype)

    @property
    def key(self) -> tuple:
        """What identifies the generated code: the class's name, the mode, every hyper-parameter, and a
        digest of the formulas the kernels are generated from. The digest tells apart two classes of one
        name, or a class defined again with another formula (a notebook cell run twice)."""
        return self.__dict__["_key"]

    @property
    def text(self) -> str:
        """``module.qualname(spiking=...;name=value;...)#digest``: the surrogate as compiled code passes
        it to the neuron operators, inside :attr:`flashspike.params.NeuronParams.text`; :meth:`from_text`
        reads it back."""
        return self.__dict__["_text"]

    @staticmethod
    def from_text(text: str) -> "SurrogateFunction":
        """The surrogate whose :attr:`text` is ``text``: an instance of the class of that name whose
        formulas have that digest (of two classes of one name, a class defined again with other
        formulas, the one the text was written from), with those hyper-parameters and mode."""
        described, _, digest = text.partition("#")
        name, _, arguments = described.partition("(")
        if not arguments.endswith(")") or not digest:
            raise ValueError(f"surrogate {text!r} is not 'module.qualname(spiking=...;name=value;...)#digest'")
        pairs = dict(item.split("=", 1) for item in arguments[:-1].split(";"))
        spiking = {"True": True, "False": False}[pairs.pop("spiking")]
        values = {key: ast.literal_eval(value) for key, value in pairs.items()}
        named = [cls for cls in (ref() for ref in _CLASSES.get(name, ())) if cls is not None]
        for cls in reversed(named):  # the latest definition first
            surrogate = cls.rebuilt(spiking, values)
            if surrogate.key[-1] == digest:
                return surrogate
        if named:
            raise ValueError(
                f"no flashspike surrogate class called {name!r} has formulas of digest {digest!r}: the class was "
                "defined again with other formulas since these options were written"
            )
        raise ValueError(
            f"no flashspike surrogate class is called {name!r}; a surrogate is rebuilt from '<module>.<qualname>' "
            "of a SurrogateFunction subclass that has been defined (imported) in this process"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_spiking_mode:
            return _SurrogateSpike.apply(x, self)
        return self.primitive(x, *self.values(), TORCH)

    # SpikingJelly prints its surrogates of several hyper-parameters with nothing in the brackets; the
    # classes of those names do the same.
    _bare_repr = False

    def extra_repr(self) -> str:
        if self._bare_repr:
            return ""
        return ", ".join(f"{name}={value}" for name, value in zip(self.hyperparameters, self.values())) + (
            f", spiking={self.spiking}")


# 'module.qualname' -> weak references to every SurrogateFunction subclass of that name, in the order
# of definition (a class defined again, in a notebook, adds one): filled as each class is created, so
# that a surrogate's text names the class it is rebuilt from.
_CLASSES: dict = {}


def _name_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _formula_digest(sg: SurrogateFunction) -> str:
    """A digest of the formulas the kernels are generated from: ``sg``'s output and slope in its mode,
    with its values, spelled as generated text. A formula that cannot be generated (a subclass that
    calls torch itself: backend 'torch' runs it, the kernel backends say why they cannot) has none."""
    emitter, x = Emitter(FORMULA), var("x")
    try:
        emitter.define("output", sg.output(x, emitter))
        emitter.define("slope", sg.output_slope(x, emitter))
    except Exception:  # whatever a formula of tensors raises when given symbols; reported at kernel build
        return "none"
    return hashlib.sha256("\n".join(emitter.lines).encode()).hexdigest()[:16]


class PiecewiseQuadratic(SurrogateFunction):
    """g'(x) = α − α²·|x| for |x| <= 1/α, else 0; g is its integral (0 below −1/α, 1 above 1/α)."""


    def __init__(self, alpha: float = 1.0, spiking: bool = True):
        super().__init__(spiking, alpha=alpha)

    @staticmethod
    def primitive(x, alpha, m):
        inner = -(alpha * alpha / 2) * x * m.abs(x) + alpha * x + 0.5
        return m.where(x > 1.0 / alpha, 1.0, m.where(x < -1.0 / alpha, 0.0, inner))

    @staticmethod
    def derivative(x, alpha, m):
        ax = m.let("abs_x", m.abs(x))
        return m.where(ax > 1.0 / alpha, 0.0, alpha - alpha * alpha * ax)


class PiecewiseExp(SurrogateFunction):
    """g'(x) = (α/2)·exp(−α|x|); g(x) = exp(−α|x|)/2 below 0, 1 − exp(−α|x|)/2 from 0 on."""


    def __init__(self, alpha: float = 1.0, spiking: bool = True):
        super().__init__(spiking, alpha=alpha)

    @staticmethod
    def primitive(x, alpha, m):
        half_tail = m.let("half_tail", 0.5 * m.exp(-alpha * _magnitude(x, m)))
        return m.where(x >= 0.0, 1.0 - half_tail, half_tail)

    @staticmethod
    def derivative(x, alpha, m):
        return (alpha / 2) * m.exp(-alpha * m.abs(x))


class Sigmoid(SurrogateFunction):
    """g(x) = sigmoid(α·x), g'(x) = α·sigmoid(αx)·(1 − sigmoid(αx))."""


    def __init__(self, alpha: float = 4.0, spiking: bool = True):
        super().__init__(spiking, alpha=alpha)

    @staticmethod
    def primitive(x, alpha, m):
        return m.sigmoid(alpha * x)

    @staticmethod
    def derivative(x, alpha, m):
        s = m.let("sigmoid", m.sigmoid(alpha * x))
        return alpha * s * (1.0 - s)


class SoftSign(SurrogateFunction):
    """g(x) = (α·x / (1 + |α·x|) + 1) / 2, g'(x) = α / (2·(1 + |α·x|)²)."""


    def __init__(self, alpha: float = 2.0, spiking: bool = True):
        super().__init__(spiking, alpha=alpha)

    @staticmethod
    def primitive(x, alpha, m):
        return 0.5 * (alpha * x / (1.0 + m.abs(alpha * x)) + 1.0)

    @staticmethod
    def derivative(x, alpha, m):
        return (alpha / 2) / (1.0 + m.abs(alpha * x)) ** 2


class ATan(SurrogateFunction):
    """g(x) = arctan(π/2·α·x)/π + 1/2, g'(x) = (α/2) / (1 + (π/2·α·x)²)."""


    def __init__(self, alpha: float = 2.0, spiking: bool = True):
        super().__init__(spiking, alpha=alpha)

    @staticmethod
    def primitive(x, alpha, m):
        return m.atan(math.pi / 2 * alpha * x) / math.pi + 0.5

    @staticmethod
    def derivative(x, alpha, m):
        return (alpha / 2) / (1.0 + (math.pi / 2 * alpha * x) ** 2)


class NonzeroSignLogAbs(SurrogateFunction):
    """g(x) = sign(x)·log(1 + α|x|) with sign(0) = +1 (not a step from 0 to 1: it passes through 0 at
    x = 0 and grows without bound), g'(x) = 1 / (1/α + |x|)."""


    def __init__(self, alpha: float = 1.0, spiking: bool = True):
        super().__init__(spiking, alpha=alpha)

    @staticmethod
    def primitive(x, alpha, m):
        magnitude = m.let("log_abs", m.log(1.0 + alpha * _magnitude(x, m)))
        return m.where(x >= 0.0, magnitude, -magnitude)

    @staticmethod
    def derivative(x, alpha, m):
        return 1.0 / (1.0 / alpha + m.abs(x))


class Erf(SurrogateFunction):
    """g(x) = erfc(−α·x)/2, g'(x) = (α/√π)·exp(−(α·x)²)."""


    def __init__(self, alpha: float = 2.0, spiking: bool = True):
        super().__init__(spiking, alpha=alpha)

    @staticmethod
    def primitive(x, alpha, m):
        return 0.5 * m.erfc(-alpha * x)

    @staticmethod
    def derivative(x, alpha, m):
        return (alpha / math.sqrt(math.pi)) * m.exp(-((alpha * x) ** 2))


class PiecewiseLeakyReLU(SurrogateFunction):
    """Backward slope 1/w for |x| < w, else c. Primitive: x/(2w) + 1/2 on [−w, w], continued with
    slope c outside (c·x + c·w below −w, c·x − c·w + 1 above w).

    As in SpikingJelly, the primitive's slope inside [−w, w] is 1/(2w), half the backward slope 1/w,
    and at |x| = w the backward slope is c while the primitive's is 1/(2w): each mode matches
    SpikingJelly's own function.
    """

    _bare_repr = True
    mode_fixed_at_construction = True
    hyperparameters = {"w": POSITIVE, "c": NON_NEGATIVE}

    def __init__(self, w: float = 1.0, c: float = 0.01, spiking: bool = True):
        super().__init__(spiking, w=w, c=c)

    @staticmethod
    def primitive(x, w, c, m):
        return m.where(x < -w, c * x + c * w, m.where(x > w, c * x + (1.0 - c * w), x / (2 * w) + 0.5))

    @staticmethod
    def derivative(x, w, c, m):
        return m.where(m.abs(x) < w, 1.0 / w, c)

    @staticmethod
    def primitive_derivative(x, w, c, m):
        return m.where(x < -w, c, m.where(x > w, c, 1.0 / (2 * w)))


class SquarewaveFourierSeries(SurrogateFunction):
    """The first n − 1 odd harmonics of a square wave of period T_period (ω = 2π/T_period):
    g(x) = 1/2 + (2/π)·Σ_{k=1..n−1} sin((2k−1)ωx)/(2k−1), g'(x) = (4/T_period)·Σ cos((2k−1)ωx).
    It is periodic: it approximates the step only for |x| < T_period/2."""

    _bare_repr = True
    mode_fixed_at_construction = True
    hyperparameters = {"n": INTEGER_AT_LEAST_2, "T_period": POSITIVE}

    def __init__(self, n: int = 2, T_period: float = 8, spiking: bool = True):
        super().__init__(spiking, n=n, T_period=T_period)

    @staticmethod
    def primitive(x, n, T_period, m):
        omega = 2 * math.pi / T_period
        total = m.sin(omega * x)
        for k in range(2, int(n)):
            total = total + m.sin((2 * k - 1) * omega * x) / (2 * k - 1)
        return 0.5 + (2 / math.pi) * total

    @staticmethod
    def derivative(x, n, T_period, m):
        omega = 2 * math.pi / T_period
        total = m.cos(omega * x)
        for k in range(2, int(n)):
            total = total + m.cos((2 * k - 1) * omega * x)
        return (4 / T_period) * total


# S2NN's primitive adds this inside its logarithm (so that log never sees 0 at x = −1).
_S2NN_LOG_EPS = 1e-5


class S2NN(SurrogateFunction):
    """Below 0: g(x) = sigmoid(αx), g'(x) = α·sigmoid(αx)(1 − sigmoid(αx)). From 0 on: g(x) =
    β·log(|x + 1| + 10⁻⁵) + 1/2 and a backward slope β/(x + 1); the primitive's own slope there is
    β/(x + 1 + 10⁻⁵), which ``primitive_derivative`` states (each as SpikingJelly computes it)."""

    _bare_repr = True
    mode_fixed_at_construction = True
    hyperparameters = {"alpha": POSITIVE, "beta": POSITIVE}

    def __init__(self, alpha: float = 4.0, beta: float = 1.0, spiking: bool = True):
        super().__init__(spiking, alpha=alpha, beta=beta)

    @staticmethod
    def primitive(x, alpha, beta, m):
        return m.where(x < 0.0, m.sigmoid(alpha * x), beta * m.log(m.abs(x + 1.0) + _S2NN_LOG_EPS) + 0.5)

    # Both sides as one quotient: σ(αx)(1 − σ(αx)) = e/(1 + e)² with e = exp(αx), so a step costs
    # one exponential and one division instead of two divisions. e is taken of min(x, 0), so it
    # never overflows on the side that does not use it (whose gradient would be 0·inf = NaN).
    @staticmethod
    def derivative(x, alpha, beta, m):
        return _s2nn_slope(x, alpha, beta, x + 1.0, m)

    @staticmethod
    def primitive_derivative(x, alpha, beta, m):
        return _s2nn_slope(x, alpha, beta, m.abs(x + 1.0) + _S2NN_LOG_EPS, m)


def _s2nn_slope(x, alpha, beta, log_side_denominator, m):
    """α·σ(αx)(1 − σ(αx)) below 0, β / ``log_side_denominator`` from 0 on."""
    below = m.let("below", m.where(x < 0.0, x, 0.0))
    e = m.let("exp", m.exp(alpha * below))
    return m.where(x < 0.0, alpha * e, beta) / m.where(x < 0.0, (1.0 + e) * (1.0 + e), log_side_denominator)


class QPseudoSpike(SurrogateFunction):
    """g'(x) = (1 + 2|x|/(α−1))^(−α), a heavy tail that grows with smaller α (α > 1);
    g(x) = q(x) below 0 and 1 − q(x) from 0 on, with q(x) = (1 + 2|x|/(α−1))^(1−α) / 2."""

    hyperparameters = {"alpha": ABOVE_ONE}

    def __init__(self, alpha: float = 2.0, spiking: bool = True):
        super().__init__(spiking, alpha=alpha)

    @staticmethod
    def primitive(x, alpha, m):
        q = m.let("tail", 0.5 * m.pow(1.0 + 2.0 / (alpha - 1.0) * _magnitude(x, m), 1.0 - alpha))
        return m.where(x >= 0.0, 1.0 - q, q)

    @staticmethod
    def derivative(x, alpha, m):
        return m.pow(1.0 + 2.0 / (alpha - 1.0) * m.abs(x), -alpha)


# Last: that module builds its autograd Functions from the classes above.
from .surrogate_functions import (MultiArgsSurrogateFunctionBase, SurrogateFunctionBase, atan, erf,  # noqa: E402
                                  nonzero_sign_log_abs, piecewise_exp, piecewise_leaky_relu, piecewise_quadratic,
                                  q_pseudo_spike, s2nn, sigmoid, soft_sign, squarewave_fourier_series)
