"""A tiny expression language so that each formula is written once and runs everywhere.

A formula is a plain Python function of its inputs and a *math namespace* ``m``:

    def derivative(x, alpha, m):
        return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)

Called with tensors and :data:`TORCH` it computes with PyTorch (the reference backend). Called with
:class:`Expr` symbols and an :class:`Emitter` it records the computation, and the emitter renders it
as CUDA C++ or Triton source for the kernel backends. Python numbers fold into constants before they
reach the expression, so per-layer constants (alpha, tau, thresholds) are baked into the kernel.

The namespace offers ``exp``, ``abs``, ``atan``, ``sigmoid`` and ``where(cond, a, b)``; comparisons (``<``, ``<=``, ``>``, ``>=``) on expressions give
conditions for ``where``; ``let(name, value)`` names an intermediate so that generated code computes
it once (for tensors it is the identity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch

__all__ = ["Expr", "Emitter", "TORCH", "CUDA", "TRITON", "Language"]


class Expr:
    """A node of a symbolic scalar float32 expression."""

    __slots__ = ("op", "args")

    def __init__(self, op: str, *args):
        self.op = op
        self.args = args

    # Arithmetic builds new nodes; Python numbers become constants.
    def __add__(self, o):
        return Expr("+", self, _lift(o))

    def __radd__(self, o):
        return Expr("+", _lift(o), self)

    def __sub__(self, o):
        return Expr("-", self, _lift(o))

    def __rsub__(self, o):
        return Expr("-", _lift(o), self)

    def __mul__(self, o):
        return Expr("*", self, _lift(o))

    def __rmul__(self, o):
        return Expr("*", _lift(o), self)

    def __truediv__(self, o):
        return Expr("/", self, _lift(o))

    def __rtruediv__(self, o):
        return Expr("/", _lift(o), self)

    def __neg__(self):
        return Expr("neg", self)

    def __pow__(self, k):
        if k != 2:
            raise NotImplementedError("only x ** 2 is supported in generated code")
        return Expr("*", self, self)

    def __lt__(self, o):
        return Expr("<", self, _lift(o))

    def __le__(self, o):
        return Expr("<=", self, _lift(o))

    def __gt__(self, o):
        return Expr(">", self, _lift(o))

    def __ge__(self, o):
        return Expr(">=", self, _lift(o))

    def __bool__(self):
        raise TypeError("a symbolic expression has no truth value; use m.where(cond, a, b)")

    __hash__ = None  # comparisons build nodes, so expressions are not hashable


def _lift(value) -> Expr:
    if isinstance(value, Expr):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"cannot use {value!r} ({type(value).__name__}) in a generated expression")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"non-finite constant {value!r} in a generated expression")
    return Expr("const", value)


def var(name: str) -> Expr:
    """A named float32 variable of the generated code."""
    return Expr("var", name)


@dataclass(frozen=True)
class Language:
    """How a target language spells constants, functions and statements."""

    name: str
    const_suffix: str  # appended to a float literal ('f' keeps CUDA arithmetic in float32)
    functions: dict  # our name -> the target's function
    where_template: str  # with {c}, {a}, {b}
    assign_template: str  # with {name}, {value}

    def const(self, value: float) -> str:
        text = repr(value)
        if "e" not in text and "." not in text:
            text += ".0"
        return f"({text}{self.const_suffix})" if value < 0 else text + self.const_suffix

    def render(self, e: Expr) -> str:
        op, args = e.op, e.args
        if op == "const":
            return self.const(args[0])
        if op == "var":
            return args[0]
        if op == "neg":
            return f"(-{self.render(args[0])})"
        if op in ("+", "-", "*", "/", "<", "<=", ">", ">="):
            return f"({self.render(args[0])} {op} {self.render(args[1])})"
        if op == "where":
            c, a, b = (self.render(a) for a in args)
            return self.where_template.format(c=c, a=a, b=b)
        if op in self.functions:
            fn = self.functions[op]
            if fn is None:
                raise NotImplementedError(f"{op}() has no {self.name} spelling here")
            return f"{fn}({', '.join(self.render(a) for a in args)})"
        raise NotImplementedError(f"unknown expression node {op!r}")


CUDA = Language(
    name="cuda",
    const_suffix="f",
    functions={"exp": "expf", "abs": "fabsf", "atan": "atanf"},
    where_template="({c} ? {a} : {b})",
    assign_template="const float {name} = {value};",
)

TRITON = Language(
    name="triton",
    const_suffix="",
    # Triton has no arctangent outside libdevice; no kernel formula needs one (only primitives do).
    functions={"exp": "tl.exp", "abs": "tl.abs", "atan": None},
    where_template="tl.where({c}, {a}, {b})",
    assign_template="{name} = {value}",
)


class Emitter:
    """The math namespace for code generation: records ``let`` statements in order."""

    def __init__(self, language: Language, prefix: str = "_t"):
        self.language = language
        self.prefix = prefix
        self.lines: list[str] = []

    def let(self, name: str, value) -> Expr:
        unique = f"{self.prefix}{len(self.lines)}_{name}"
        self.lines.append(
            self.language.assign_template.format(name=unique, value=self.language.render(_lift(value)))
        )
        return var(unique)

    def define(self, name: str, value) -> Expr:
        """Like ``let`` but under exactly ``name``: the variables a kernel template reads back."""
        self.lines.append(
            self.language.assign_template.format(name=name, value=self.language.render(_lift(value)))
        )
        return var(name)

    def render(self, value) -> str:
        return self.language.render(_lift(value))

    @staticmethod
    def exp(x):
        return Expr("exp", _lift(x))

    @staticmethod
    def abs(x):
        return Expr("abs", _lift(x))

    @staticmethod
    def atan(x):
        return Expr("atan", _lift(x))

    @staticmethod
    def sigmoid(x):
        return 1.0 / (1.0 + Expr("exp", -_lift(x)))

    @staticmethod
    def where(cond, a, b):
        return Expr("where", cond, _lift(a), _lift(b))


def _torch_where(cond, a, b):
    return torch.where(cond, a, b)


#: The math namespace for PyTorch tensors (the reference backend).
TORCH = SimpleNamespace(
    exp=torch.exp,
    abs=torch.abs,
    atan=torch.atan,
    sigmoid=torch.sigmoid,
    where=_torch_where,
    let=lambda name, value: value,
)
