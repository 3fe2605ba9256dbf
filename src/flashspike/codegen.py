"""A tiny expression language so that each formula is written once and runs everywhere.

A formula is a plain Python function of its inputs and a *math namespace* ``m``:

    def derivative(x, alpha, m):
        return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)

Called with tensors and :data:`TORCH` it computes with PyTorch (the reference backend). Called with
:class:`Expr` symbols and an :class:`Emitter` it records the computation, and the emitter renders it
as CUDA C++ or Triton source for the kernel backends. Python numbers fold into constants before they
reach the expression, so per-layer constants (alpha, tau, thresholds) are baked into the kernel.

The namespace offers ``exp``, ``log``, ``sqrt``, ``abs``, ``sin``, ``cos``, ``atan``, ``erf``, ``erfc``,
``sigmoid``, ``pow(base, k)`` (a positive base to a constant power) and ``where(cond, a, b)``;
comparisons (``<``, ``<=``, ``>``, ``>=``) on expressions give conditions for ``where``;
``let(name, value)`` names an intermediate so that generated code computes it once (for tensors it
is the identity).

CUDA spells most functions with their accurate float32 routines (``expf``, ``atanf``,
``erfcf``...; no ``__expf``-style intrinsics). Triton's core language has no arctangent, erfc or pow, and
``libdevice`` does not run in Triton's CPU interpreter, so those three are composed from what it
has: ``erfc(z) = 1 − erf(z)`` (the same to float32's absolute rounding, not relative to a tiny
result), and ``atan`` as a polynomial after range reduction (within 2·10⁻⁷ relative of the true
value). ``pow`` is composed in both languages: a whole exponent up to 4 in size as products (and one
division for a negative one), any other as ``exp2(k·log2 b)`` in CUDA and ``exp(k·log b)`` in
Triton; CUDA's ``powf`` computes its logarithm in extended precision, several times the cost of
the kernel's whole step, for an accuracy the surrogate's slope does not need. CUDA's ``sin(z)`` and
``cos(z)`` are ``sinpif(z/π)`` and ``cospif(z/π)``: their range reduction is exact and branch-free,
where ``sinf``/``cosf`` carry a slow path for large arguments (a call with a stack frame, and more
registers around it); the rounding of z/π costs an absolute error of about |z|·10⁻⁷. Triton's
``cos`` is composed for the same reason: a reduction by π and one even polynomial, without a branch,
exact for |z| <= 2¹³·π; larger arguments (rare: a potential far from the threshold) go to ``tl.cos``.

Generated statements nest at most :data:`MAX_NESTING` parentheses deep: a deeper expression (a sum
of hundreds of terms) is cut into named intermediates, as Python's parser (Triton's kernels are
Python) refuses about 200 levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

__all__ = ["Expr", "Emitter", "TORCH", "CUDA", "TRITON", "FORMULA", "Language"]


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
            raise NotImplementedError("only x ** 2 is supported in generated code; use m.pow(base, k)")
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
    # our name -> a function (emitter, *args) -> Expr that composes what the target lacks
    compositions: dict = field(default_factory=dict)

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
            return f"{self.functions[op]}({', '.join(self.render(a) for a in args)})"
        raise NotImplementedError(
            f"{op}() has no {self.name} spelling; build expressions with an Emitter of this language, which "
            "composes the functions the language lacks")


CUDA = Language(
    name="cuda",
    const_suffix="f",
    functions={"exp": "expf", "log": "logf", "sqrt": "sqrtf", "abs": "fabsf", "sin": "sinf", "cos": "cosf",
               "atan": "atanf", "erf": "erff", "erfc": "erfcf", "exp2": "exp2f", "log2": "log2f",
               "sinpi": "sinpif", "cospi": "cospif"},
    where_template="({c} ? {a} : {b})",
    assign_template="const float {name} = {value};",
    compositions={"pow": lambda e, base, k: _pow_composed(e, base, k, "exp2", "log2"),
                  "sin": lambda e, z: Expr("sinpi", z * (1.0 / math.pi)),
                  "cos": lambda e, z: Expr("cospi", z * (1.0 / math.pi))},
)

# Whole exponents up to this size become products of the base (at most 2 multiplications).
_POW_BY_PRODUCTS = 4


def _pow_composed(e, base, k, exp_op, log_op):
    """``base ** k`` for a positive base: products for a small whole ``k`` (|k| <= 4), else
    ``exp_op(k · log_op(base))`` (exp2/log2 or exp/log, one pair of the language's functions)."""
    power = k.args[0]
    if power != int(power) or abs(power) > _POW_BY_PRODUCTS:
        return Expr(exp_op, k * Expr(log_op, base))
    n = abs(int(power))
    if n == 0:
        return _lift(1.0)
    b = e.let("pow_base", base) if n > 1 else base
    result = None
    square = b
    while n:  # binary powering: b², b⁴ from one multiplication each
        if n & 1:
            result = square if result is None else result * square
        n >>= 1
        if n:
            square = e.let("pow_square", square * square)
    return result if power > 0 else 1.0 / result


def _erfc_by_erf(e, z):
    return 1.0 - Expr("erf", z)


# atan(t) ≈ t + t·t²·P(t²) for |t| <= tan(π/8): a least-squares fit of relative error (float32 rounding
# dominates what is left). Larger |x| is reduced by atan(x) = π/4 + atan((x−1)/(x+1)) and
# atan(x) = π/2 + atan(−1/x).
_ATAN_POLY = (-0.333329732, 0.199784885, -0.138850798, 0.0807532711)
_TAN_PI_8, _TAN_3PI_8 = math.tan(math.pi / 8), math.tan(3 * math.pi / 8)


def _atan_by_polynomial(e, x):
    a = e.let("atan_abs", Expr("abs", x))
    far, mid = a > _TAN_3PI_8, a > _TAN_PI_8
    # (the far branch divides by 1 where it is not taken: no infinity even in lanes that discard it)
    t = e.let("atan_t", e.where(far, -1.0 / e.where(far, a, 1.0), e.where(mid, (a - 1.0) / (a + 1.0), a)))
    z = e.let("atan_z", t * t)
    poly = _lift(_ATAN_POLY[-1])
    for c in reversed(_ATAN_POLY[:-1]):
        poly = poly * z + c
    r = e.let("atan_r", e.where(far, math.pi / 2, e.where(mid, math.pi / 4, 0.0)) + (t + t * z * poly))
    return e.where(x < 0.0, -r, r)


# cos(r) for |r| <= π/2 by its Taylor series to r¹² (truncation below 10⁻⁸ there). π is split into
# three parts, the first two with few enough bits (8 and 11) that k times them is exact in float32 for
# |k| <= 2¹³, so the reduction z − k·π loses (almost) nothing while |z| <= 2¹³·π (about 25,700).
_COS_TAYLOR = tuple((-1) ** i / math.factorial(2 * i) for i in range(7))
_PI_PARTS = (3.140625, 9.67502593994140625e-4, 1.509957990978376432e-7)
_COS_EXACT_LIMIT = 2.0**13 * math.pi


def _cos_by_polynomial(e, z):
    """cos(z) = (−1)^k cos(z − kπ), k the nearest whole number to z/π: no branch, one polynomial, for
    |z| <= 2¹³·π. (Triton's tl.cos carries a slow path for huge arguments that costs the kernel time;
    the Fourier-series surrogate's slope is a sum of cosines.) A larger |z| (a potential far from the
    threshold) goes to tl.cos, which reduces every float exactly; the other lanes give it 0, so they
    never take its slow path, and the polynomial is given 0 in the far lanes, so it never overflows."""
    far = e.let("cos_far", Expr("abs", z) > _COS_EXACT_LIMIT)
    near_z = e.let("cos_z", e.where(far, 0.0, z))
    k = e.let("cos_k", Expr("floor", near_z * (1.0 / math.pi) + 0.5))
    head, middle, tail = _PI_PARTS
    r = e.let("cos_r", ((near_z - k * head) - k * middle) - k * tail)
    r2 = e.let("cos_r2", r * r)
    poly = _lift(_COS_TAYLOR[-1])
    for c in reversed(_COS_TAYLOR[:-1]):
        poly = poly * r2 + c
    poly = e.let("cos_poly", poly)
    near = e.where(k - 2.0 * Expr("floor", k * 0.5) > 0.5, -poly, poly)
    return e.where(far, Expr("cos", e.where(far, z, 0.0)), near)


TRITON = Language(
    name="triton",
    const_suffix="",
    functions={"exp": "tl.exp", "log": "tl.log", "sqrt": "tl.sqrt", "abs": "tl.abs", "sin": "tl.sin",
               "cos": "tl.cos", "erf": "tl.erf", "floor": "tl.floor"},
    where_template="tl.where({c}, {a}, {b})",
    assign_template="{name} = {value}",
    compositions={"pow": lambda e, base, k: _pow_composed(e, base, k, "exp", "log"), "erfc": _erfc_by_erf,
                  "atan": _atan_by_polynomial, "cos": _cos_by_polynomial},
)


#: Formulas spelled for telling them apart, not for compiling: each function under its own name, nothing
#: composed. Two formulas with the same text compute the same thing (see SurrogateFunction.key).
FORMULA = Language(
    name="formula",
    const_suffix="",
    functions={name: name for name in ("exp", "log", "sqrt", "abs", "sin", "cos", "atan", "erf", "erfc", "floor",
                                        "pow")},
    where_template="where({c}, {a}, {b})",
    assign_template="{name} = {value}",
)


def _function(op: str):
    """The math namespace's ``op(x)`` for an :class:`Emitter`."""

    def call(self, x):
        return self._call(op, x)

    call.__name__ = call.__qualname__ = op
    return call


# How deep a generated statement may nest its parentheses: far below the about 200 levels Python's
# parser takes (Triton reads its kernels as Python), and below what C compilers take without complaint.
MAX_NESTING = 32


class Emitter:
    """The math namespace for code generation: records ``let`` statements in order."""

    def __init__(self, language: Language, prefix: str = "_t"):
        self.language = language
        self.prefix = prefix
        self.lines: list[str] = []

    def let(self, name: str, value) -> Expr:
        return self._assign(self._unique(name), self._shallow(_lift(value)))

    def define(self, name: str, value) -> Expr:
        """Like ``let`` but under exactly ``name``: the variables a kernel template reads back."""
        return self._assign(name, self._shallow(_lift(value)))

    def render(self, value) -> str:
        return self.language.render(self._shallow(_lift(value)))

    def _unique(self, name: str) -> str:
        return f"{self.prefix}{len(self.lines)}_{name}"

    def _assign(self, name: str, value: Expr) -> Expr:
        self.lines.append(self.language.assign_template.format(name=name, value=self.language.render(value)))
        return var(name)

    def _shallow(self, root: Expr) -> Expr:
        """``root`` with each subexpression that would nest deeper than :data:`MAX_NESTING` named by a
        statement of its own (walked without recursion: a formula may be thousands of levels deep)."""
        done: dict = {}  # id(node) -> (the node as rendered, its nesting depth)
        stack = [root]
        while stack:
            node = stack[-1]
            if id(node) in done:
                stack.pop()
                continue
            children = [a for a in node.args if isinstance(a, Expr)]
            pending = [c for c in children if id(c) not in done]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            if not children:
                done[id(node)] = (node, 0)
                continue
            args = tuple(done[id(a)][0] if isinstance(a, Expr) else a for a in node.args)
            shallow = node if all(a is b for a, b in zip(args, node.args)) else Expr(node.op, *args)
            depth = 1 + max(done[id(c)][1] for c in children)
            if depth > MAX_NESTING:
                shallow, depth = self._assign(self._unique("part"), shallow), 0
            done[id(node)] = (shallow, depth)
        return done[id(root)][0]

    def _call(self, op: str, *args) -> Expr:
        """``op(*args)`` as the language spells it, or composed from what it has."""
        args = tuple(_lift(a) for a in args)
        compose = self.language.compositions.get(op)
        return Expr(op, *args) if compose is None else compose(self, *args)

    exp, log, sqrt, abs, sin, cos, atan, erf, erfc = (
        _function(name) for name in ("exp", "log", "sqrt", "abs", "sin", "cos", "atan", "erf", "erfc"))

    def pow(self, base, k):
        """``base ** k`` for a positive ``base`` and a constant ``k``."""
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            raise TypeError(f"pow() takes a constant exponent in generated code, got {k!r}")
        return self._call("pow", base, k)

    def sigmoid(self, x):
        return 1.0 / (1.0 + self.exp(-_lift(x)))

    @staticmethod
    def where(cond, a, b):
        return Expr("where", cond, _lift(a), _lift(b))


def _torch_where(cond, a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.where(cond, a, b)
    # Two constants: torch would make them the default dtype (float32), rounding them for float64
    # callers; float64 keeps them exact, and the caller's cast or arithmetic brings them to its dtype.
    return torch.where(cond, torch.tensor(a, dtype=torch.float64, device=cond.device), b)


#: The math namespace for PyTorch tensors (the reference backend).
TORCH = SimpleNamespace(
    exp=torch.exp,
    log=torch.log,
    sqrt=torch.sqrt,
    abs=torch.abs,
    sin=torch.sin,
    cos=torch.cos,
    atan=torch.atan,
    erf=torch.erf,
    erfc=torch.erfc,
    pow=torch.pow,
    sigmoid=torch.sigmoid,
    where=_torch_where,
    let=lambda name, value: value,
)
